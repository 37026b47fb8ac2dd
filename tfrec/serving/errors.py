"""The server's error type and readable messages from TensorFlow's errors."""

from __future__ import annotations

import re

import grpc


# A client's string (a name, a value) is shown in a message cut to this many characters; a
# whole message is cut to MESSAGE_CHARS, so that no request can make its answer large.
ECHO_CHARS = 64
MESSAGE_CHARS = 1000


def shown(value, limit: int = ECHO_CHARS) -> str:
    """A string a client sent, for a message: at most `limit` characters, "..." marking a cut.

    Bytes are decoded as UTF-8 (invalid bytes replaced); anything else is `str()`-ed.
    """
    if isinstance(value, bytes):
        value = value[:limit * 4].decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def capped(message: str) -> str:
    """A whole error message, cut to `MESSAGE_CHARS` characters (a last bound on what is
    echoed: every client string in it is already cut by `shown`)."""
    return shown(message, MESSAGE_CHARS)


class ServingError(Exception):
    """An RPC failure with its gRPC status code (REST maps it to an HTTP status).

    Attributes:
      message: the message (gRPC).
      public: the message for REST clients, without the server's paths (default:
        `message`).
    """

    def __init__(self, code: grpc.StatusCode, message: str, public: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.public = message if public is None else public


_ASSERTION = re.compile(r"assertion failed: \[(?P<message>[^\]]*)\]")


def tensorflow_message(message: str) -> str:
    """The part of a TensorFlow error a caller can act on.

    A failed `tf.debugging.assert_*` inside a SavedModel reads "Graph execution
    error: ... Detected at node assert_less_equal/Assert/Assert ... assertion
    failed: [k must be at most 100 ...] [Condition x <= y ...]": the message
    given to the assertion is returned. Otherwise the first line that is not
    TensorFlow's framing (stack traces, node names) is.
    """
    found = _ASSERTION.search(message)
    if found:
        return found["message"].strip()
    framing = ("Graph execution error", "Detected at node", "<stack traces", "[[{{node",
               "defined at (most recent call last)")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not any(f in line for f in framing)
              and not line.startswith("File ")]
    return (useful or ["the model failed on this input"])[0]
