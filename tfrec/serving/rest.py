"""TF Serving's REST API (`/v1/models/...`) over the same Predictor as gRPC.

A hardened `http.server`: every request is read in full (Content-Length only;
chunked bodies are refused) before anything is parsed, and any error response
closes the connection, so a body that was not read is never taken for a
request. Reads time out (`read_timeout`, also the idle keep-alive limit), the
number of open connections is capped (`max_connections`, and
`max_connections_per_address` for one client address; over either a connection
gets 503 from the accepting thread, which never blocks on it), a request's line
and headers must arrive within `header_timeout` of its first byte and its body
at `min_body_rate` bytes/s (a client trickling bytes is cut off, so it holds a
connection for seconds, not minutes), error answers to one client address are
paced to `error_rate` a second past a burst of as many (a client replaying
refused requests in a loop waits for its answers instead of keeping a core
busy with them; good requests are never held), bodies over `max_body_bytes` get 413
unread, and `stop(grace)` lets requests in flight finish while answering new
ones with 503. A predict body's values are counted while it arrives (`limits`,
`_ValueCounter`): one holding more than a request may is refused (400, and the
connection closed) as soon as the part read shows it, without reading the rest,
at the cost of a scan, not of the Python objects parsing would build. Client
strings in error messages are cut short (`errors.shown`), a whole message too;
an unexpected failure is a 500 whose message names nothing of it (the server
log has the exception).

JSON inputs become numpy arrays without narrowing: integers are int64 (an
integer outside int64 is refused), any float makes the input float64, strings
are UTF-8 bytes, and lists of string lists of different lengths are padded
with "" (no item). Anything else (objects, null, booleans, ragged numbers,
mixed types, lists nested more than `_MAX_DEPTH` deep) is a 400 naming the input.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import logging
import re
import reprlib
import select
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

import grpc
import numpy as np
from google.protobuf import json_format

from tfrec.config import ServeConfig
from tfrec.serving.errors import ServingError, capped, shown
from tfrec.serving.pacing import ErrorPace
from tfrec.serving.predict import MAX_MESSAGE_BYTES, UNNAMED

logger = logging.getLogger(__name__)

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)"
                   r"(?:/versions/(?P<version>[0-9]{1,18})|/labels/(?P<label>[^/:]+))?"
                   r"(?P<verb>:predict|:classify|:regress|/metadata)?/?$")
# gRPC status -> HTTP status (google.rpc's mapping; CANCELLED is 503 here because a
# call is only cancelled by this server when it is shutting down: the client may retry).
_HTTP = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
         grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
         grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
         grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.ABORTED: 409,
         grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNIMPLEMENTED: 501,
         grpc.StatusCode.CANCELLED: 503, grpc.StatusCode.UNAVAILABLE: 503,
         grpc.StatusCode.DEADLINE_EXCEEDED: 504}
_MAX_DEPTH = 32  # lists inside one input
_INT64 = np.iinfo(np.int64)
_KNOWN_METHODS = {"HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
_LINGER_SECONDS = 2.0  # reading what a client still sends after we close, so it sees our answer
_LINGER_BYTES = 1 << 20


def _invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _short(value, limit: int = 40) -> str:
    if isinstance(value, int) and value.bit_length() > 200:
        return f"an integer of ~{int(value.bit_length() * 0.30103)} digits"
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(value):
    value = np.asarray(value)
    if value.dtype.kind in "OS":
        if value.ndim == 0:
            item = value.item()
            return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
        return [_jsonable(v) for v in value]
    return value.tolist()


# ---------------------------------------------------------------------------- JSON -> arrays

def _parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except RecursionError:
        name = _deep_input_name(raw)
        where = f"input {shown(name)!r}: " if name else ""
        raise _invalid(f"{where}the JSON nests deeper than the parser allows; an input may "
                       f"nest at most {_MAX_DEPTH} lists") from None
    except UnicodeDecodeError:
        raise _invalid("the body is not UTF-8 JSON") from None
    except ValueError as err:  # JSONDecodeError, or an integer literal of > 4300 digits
        raise _invalid(f"malformed JSON: {err}") from None


# Counting a body's values before it is parsed (`_too_many_values`).
_STRUCTURE = np.zeros(256, dtype=bool)  # JSON's punctuation and white space
_STRUCTURE[list(b" \t\r\n[]{},:")] = True
# bytes.translate table: 1 for a bare token's bytes (not punctuation, white space, quote)
_TOKEN_BYTES = bytes(0 if _STRUCTURE[b] or b == ord('"') else 1 for b in range(256))
_QUOTE, _BACKSLASH, _COLON = ord('"'), ord("\\"), ord(":")
_NOT_BACKSLASH = re.compile(rb"[^\\]")
_COUNT_CHUNK = 1 << 20
# A segment's bytes are placed inside or outside strings by a binary search each among
# its quotes while that costs less than this share of a pass over the segment.
_SEARCH_SHARE = 0.5


class _ValueCounter:
    """Counts a JSON text's values (strings, numbers, true, false, null; object keys not
    counted) while it arrives, without parsing it, to tell whether it holds more than
    `most`. Parsing builds a Python object per value (about 60 bytes and 0.5 us each), so
    a body is counted first; for a text that is not JSON the count is an estimate (the
    parser refuses such a text anyway).

    `update(data, end)`: `data[:end]` has arrived (`data` may grow; its bytes do not
    change); True once that part alone shows the whole text to be over. `finish(data)`: the
    answer for the whole text `data`, the same whatever parts it arrived in.

    Every value follows "[", "," or ":", or is the whole text: until those reach `most`
    nothing else is done (the usual answer, at the cost of `bytes.count`). Past that the
    text is counted in numpy, `_COUNT_CHUNK` bytes at a time (so that no other thread waits
    long for the interpreter), a segment never ending inside a run of backslashes, and the
    count is compared with `most` at segment ends only; the segments do not depend on how
    the text arrives, so neither does the answer. Between parts the counter carries the
    count, whether a string or a bare token is open, and holds back a trailing run of
    backslashes, so that an escaped quote is never split from its backslashes.
    """

    def __init__(self, most: int):
        self.most = most
        self.bound = 0  # "[", "," and ":" in data[:self._bounded]
        self.count = 0  # values in data[:self._done] (a key whose colon is to come, too)
        self.in_string = self.in_token = False  # at self._done
        self.over = False  # the part read shows the whole text to be over
        self._bounded = 0
        self._done = 0  # counted up to here
        self._start = 0  # where the segment being counted began
        self._seen = 0  # data[self._done:self._seen] is a run of backslashes, held back
        self._chunk = _COUNT_CHUNK

    def update(self, data, end: int) -> bool:
        """Whether `data[:end]`, arrived so far, shows the whole text to hold more than
        `most` values (then it does, whatever follows)."""
        if not self.over:
            self._advance(data, end, final=False)
        return self.over

    def finish(self, data) -> bool:
        """Whether the whole text `data` holds more than `most` values."""
        if not self.over:
            self._advance(data, len(data), final=True)
        return self.over or (self.bound >= self.most and self.count > self.most)

    def _advance(self, data, avail: int, final: bool) -> None:
        chunk = self._chunk
        while self.bound < self.most and self._bounded < avail:
            start, end = self._bounded, min(avail, self._bounded + chunk)
            self.bound += (data.count(b",", start, end) + data.count(b"[", start, end)
                           + data.count(b":", start, end))
            self._bounded = end
        if self.bound < self.most:
            return
        ready = avail if final else self._ready(data, avail)
        while not self.over:
            end = self._start + chunk
            if end > ready or (final and end == ready):  # within the last segment
                self._count(data, ready)
                return
            if end < ready:  # never split a run of backslashes
                found = _NOT_BACKSLASH.search(data, end - 1, ready)
                end = found.end() if found else ready  # none: only at the text's end
            self._count(data, end)
            self._start = end
            if self.count > self.most + 1:  # + 1: a key whose colon is in the next segment
                self.over = True

    def _ready(self, data, avail: int) -> int:
        """Where what has arrived can be counted up to: `avail`, less a trailing run of
        backslashes (the byte after it tells whether a quote is escaped)."""
        ready = avail
        if avail > self._done and data[avail - 1] == _BACKSLASH:
            low = max(self._done, self._seen)  # what is before low is held back already
            tail = np.frombuffer(data, dtype=np.uint8, count=avail - low, offset=low)
            others = np.flatnonzero(tail != _BACKSLASH)
            ready = low + int(others[-1]) + 1 if others.size else self._done
        self._seen = max(avail, self._done)
        return max(ready, self._done)

    def _count(self, data, end: int) -> None:
        """Counts data[self._done:end] (which does not end inside a run of backslashes,
        unless the text does).

        Without a mask of what is inside strings (a running parity over every byte, the
        costliest pass) unless many bytes need placing: a bare token starts where a token
        byte follows a byte that is not one; such a start is inside a string after an
        opening quote, outside after a closing one, and after punctuation, white space or
        an escaped quote it is inside when an odd number of quotes (plus one if a string
        was open) come before it, as is a colon (not then a key's)."""
        start = self._done
        if end <= start:
            return
        chunk = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
        is_quote = chunk == _QUOTE
        quotes = np.flatnonzero(is_quote)
        escaped = quotes[:0]
        if quotes.size and data.find(b"\\", start, end) >= 0:
            # A quote after an odd run of backslashes is escaped: drop it.
            backslash = np.zeros(chunk.size + 2, dtype=np.int8)
            backslash[1:-1] = chunk == _BACKSLASH
            edges = np.diff(backslash)
            runs, after = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
            after = after[((after - runs) % 2 == 1) & (after < chunk.size)]
            escaped = after[chunk[after] == _QUOTE]
            quotes = np.setdiff1d(quotes, escaped, assume_unique=True)
        token = np.frombuffer(bytes(data[start:end]).translate(_TOKEN_BYTES), dtype=bool)
        rises = token[1:] & ~token[:-1]  # at position p + 1
        opened = 1 if self.in_string else 0  # quotes[opened::2] open a string

        inside = []

        def outside(positions):  # how many of `positions` (not quotes) are outside strings
            if positions.size * np.log2(quotes.size + 2) < chunk.size * _SEARCH_SHARE:
                return int(np.count_nonzero((np.searchsorted(quotes, positions) + opened) % 2
                                            == 0))
            if not inside:  # many: the running parity, once
                toggle = np.zeros(chunk.size, dtype=np.uint8)
                toggle[quotes] = 1
                inside.append(np.bitwise_xor.accumulate(toggle).astype(bool) ^ bool(opened))
            return int(positions.size - np.count_nonzero(inside[0][positions]))

        starts = outside(np.flatnonzero(rises & ~is_quote[:-1]) + 1)
        if np.any(rises & is_quote[:-1]):
            closing = quotes[1 - opened::2]
            closing = closing[closing < chunk.size - 1]
            starts += int(np.count_nonzero(token[closing + 1]))
            escaped = escaped[escaped < chunk.size - 1] + 1
            starts += outside(escaped[token[escaped]])
        starts += bool(token[0] and not self.in_string and not self.in_token)
        strings = quotes[opened::2].size  # opening quotes
        keys = outside(np.flatnonzero(chunk == _COLON))
        self.count += starts + strings - keys
        self.in_string = bool((quotes.size + opened) % 2)
        self.in_token = bool(token[-1]) and not self.in_string
        self._done = end


def _too_many_values(raw: bytes, most: int) -> bool:
    """Whether a JSON text holds more than `most` values (see `_ValueCounter`)."""
    return _ValueCounter(most).finish(raw)


_DEEP_SCAN_BYTES = 8 << 20
_KEY = re.compile(rb'"((?:[^"\\]|\\.){1,200})"\s*:')


def _deep_input_name(raw: bytes) -> str | None:
    """Best effort, for the message only: the input whose value nests too deep."""
    try:
        data = np.frombuffer(raw, dtype=np.uint8)[:_DEEP_SCAN_BYTES]
        step = (np.isin(data, (ord("["), ord("{"))).astype(np.int32)
                - np.isin(data, (ord("]"), ord("}"))).astype(np.int32))
        depth = np.cumsum(step)
        over = np.flatnonzero(depth > _MAX_DEPTH + 3)
        if not over.size:
            return None
        name = None
        for found in _KEY.finditer(raw, 0, int(over[0])):
            level = depth[found.start()]  # 1: "instances"/"inputs"; 2: columnar; 3: rows
            if level in (2, 3):
                name = found.group(1).decode("utf-8", "replace")
        return name
    except Exception:
        return None


def _arrays_from_json(body: dict, most: int | None = None) -> tuple[dict, bool]:
    """(named arrays, row format?) from a predict body ("instances" or "inputs"); `most`
    bounds the values of an input once its string lists are padded."""
    if "instances" in body and "inputs" in body:
        raise _invalid("the body has both 'instances' (row format) and 'inputs' (columnar); "
                       "send one")
    if "instances" in body:
        return _arrays_from_rows(body["instances"], most), True
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict) or _is_text(inputs):
            # Bare values: the one input of a signature of one input, as TF Serving takes.
            return {UNNAMED: _to_array("inputs", inputs, most)}, False
        return {name: _to_array(name, value, most) for name, value in inputs.items()}, False
    raise _invalid("the body needs 'instances' (row format) or 'inputs' (columnar)")


def _arrays_from_rows(instances, most: int | None = None) -> dict:
    """The row format's named arrays: each input stacks its value of every instance, so its
    leading (batch) dimension is the number of instances, whatever the values are. Bare
    values (not objects) are one unnamed input (`predict.UNNAMED`), for a signature of one
    input. An input the signature declares as a scalar (such as k) is taken from the
    stacked rows by `predict.check_inputs`."""
    if not isinstance(instances, list) or not instances:
        raise _invalid("'instances' must be a non-empty list (of objects of named inputs, or "
                       "of values for a signature of one input)")
    named = [isinstance(instance, dict) and not _is_text(instance) for instance in instances]
    if not any(named):
        return {UNNAMED: _to_array("instances", instances, most)}
    if not all(named):
        i = named.index(False)
        raise _invalid(f"instance {i}: each instance must be an object of named inputs "
                       f"(as instance {named.index(True)} is), got "
                       f"{type(instances[i]).__name__}")
    names = set(instances[0])
    if not names:
        raise _invalid("instance 0 names no inputs")
    for i, instance in enumerate(instances):
        if set(instance) != names:
            raise _invalid(f"instance {i} names {_names(instance)}, instance 0 names "
                           f"{_names(names)}: every instance must name the same inputs")
    return {name: _to_array(name, [instance[name] for instance in instances], most)
            for name in instances[0]}


def _names(names, most: int = 5) -> str:
    """Input names a client sent, for a message: each cut short, at most `most` of them."""
    names = sorted(names)
    listed = [shown(n) for n in names[:most]] + (["..."] if len(names) > most else [])
    return "[" + ", ".join(repr(n) for n in listed) + "]"


def _is_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, dict) and set(value) == {"b64"})


def _to_array(name: str, value, most: int | None = None) -> np.ndarray:
    """One input's JSON value -> a numpy array (see the module docstring for the rules);
    lists of strings are padded only if that makes at most `most` values."""
    name = shown(name)  # for messages only
    if (isinstance(value, list) and value and all(isinstance(v, list) for v in value)
            and all(_is_text(x) for v in value for x in v)):
        width = max(len(v) for v in value)
        if most is not None and len(value) * width > most:
            raise _invalid(f"input {name!r}: padding its {len(value):,} lists of strings to "
                           f"the longest ({width:,}) makes {len(value) * width:,} values, over "
                           f"the limit of {most:,} values per request "
                           "(tfrec serve --max_request_elements)")
        value = [v + [""] * (width - len(v)) for v in value]  # lists of strings: padded
    leaves: list = []
    shape = _shape(name, value, 0, leaves)
    return _leaves_to_array(name, leaves, shape)


def _shape(name: str, value, depth: int, leaves: list) -> tuple:
    if not isinstance(value, list):
        leaves.append(value)
        return ()
    if depth >= _MAX_DEPTH:
        raise _invalid(f"input {name!r}: lists nested more than {_MAX_DEPTH} deep")
    nested = [isinstance(v, list) for v in value]
    if not any(nested):
        leaves.extend(value)
        return (len(value),)
    if not all(nested):
        raise _invalid(f"input {name!r}: a list holds both values and lists; an input must be "
                       "a rectangular array (lists of the same depth and length)")
    shapes = [_shape(name, v, depth + 1, leaves) for v in value]
    for other in shapes[1:]:
        if other != shapes[0]:
            raise _invalid(f"input {name!r}: ragged lists (shapes {list(shapes[0])} and "
                           f"{list(other)} side by side); an input must be a rectangular "
                           "array, only lists of strings of different lengths are padded")
    return (len(value),) + shapes[0]


def _leaves_to_array(name: str, leaves: list, shape: tuple) -> np.ndarray:
    if not leaves:
        return np.zeros(shape, dtype=np.float64)
    kinds = {type(x) for x in leaves}
    if dict in kinds:
        leaves = [_b64(name, x) if isinstance(x, dict) else x for x in leaves]
        kinds = {type(x) for x in leaves}
    if kinds <= {str, bytes}:
        try:
            data = [x.encode("utf-8") if isinstance(x, str) else x for x in leaves]
        except UnicodeEncodeError:
            raise _invalid(f"input {name!r}: a string holds an unpaired surrogate (\\ud800 to "
                           "\\udfff escape); strings must be valid Unicode") from None
        array = np.empty(len(data), dtype=object)
        array[:] = data
        return array.reshape(shape)
    if kinds <= {int, float}:
        if int in kinds:
            ints = [x for x in leaves if type(x) is int] if float in kinds else leaves
            low, high = min(ints), max(ints)
            if low < _INT64.min or high > _INT64.max:
                bad = high if high > _INT64.max else low
                raise _invalid(f"input {name!r}: {_short(bad)} is out of range for a 64-bit "
                               f"integer ([{_INT64.min}, {_INT64.max}])")
        dtype = np.float64 if float in kinds else np.int64
        return np.array(leaves, dtype=dtype).reshape(shape)
    if bool in kinds:
        raise _invalid(f"input {name!r}: true/false is not accepted; values must be numbers "
                       "or strings")
    if type(None) in kinds:
        raise _invalid(f"input {name!r}: null is not a value; values must be numbers or "
                       "strings")
    if kinds & {str, bytes} and kinds & {int, float}:
        raise _invalid(f"input {name!r}: mixes strings and numbers; all values of an input "
                       "must have one type")
    raise _invalid(f"input {name!r}: values must be numbers or strings")


def _b64(name: str, value: dict) -> bytes:
    if set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise _invalid(f"input {name!r}: an object ({_short(value)}) is not a value; values "
                       'must be numbers, strings or {"b64": "<base64 string>"}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"input {name!r}: {_short(value['b64'])} is not valid base64") from None


def _predictions(outputs: dict, rows: bool) -> dict:
    """TF Serving's answer: a signature of one output is answered by its values alone
    (no name), of several by an object per row ("predictions") or per output ("outputs")."""
    outputs = {k: np.asarray(v) for k, v in outputs.items()}
    single = len(outputs) == 1
    if not rows:
        if single:
            return {"outputs": _jsonable(next(iter(outputs.values())))}
        return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in outputs.items()}
    if len(set(sizes.values())) > 1 or None in sizes.values():
        raise _invalid(f"the outputs have no common batch size ({sizes}) to split into "
                       "'predictions'; ask with the columnar 'inputs' format")
    n = next(iter(sizes.values()), 0)
    if single:
        return {"predictions": _jsonable(next(iter(outputs.values())))}
    return {"predictions": [{k: _jsonable(v[i]) for k, v in outputs.items()}
                            for i in range(n)]}


# ---------------------------------------------------------------------------- HTTP

class _Reply(Exception):
    """An HTTP answer other than 200 (a status and a JSON error body)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _refuse(sock: socket.socket, message: str) -> None:
    """503 and close, from the accepting thread: never blocks."""
    data = json.dumps({"error": message}).encode("utf-8")
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    try:
        sock.setblocking(False)
        sock.send(head.encode("ascii") + data)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(65536)  # whatever already arrived, so that closing does not reset the answer
    except OSError:
        pass
    finally:
        sock.close()


def _wait_hangup(sock: socket.socket, seconds: float) -> None:
    """Waits up to `seconds` for the peer to hang up, without reading what it sent."""
    hangup = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
    poller = select.poll()
    poller.register(sock, hangup)
    poller.poll(max(0, int(seconds * 1000)))


class _HTTPServer(socketserver.TCPServer):
    """Accepts connections; each gets a thread, up to `max_connections` of them."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, predictor, read_timeout: float, max_connections: int,
                 max_body_bytes: int, limits=None, max_per_address: int | None = None,
                 header_timeout: float | None = None, min_body_rate: float = 0.0,
                 error_rate: float = 0.0):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.predictor = predictor
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address or max_connections
        self.header_timeout = header_timeout or read_timeout
        self.min_body_rate = min_body_rate
        self.per_address: dict = {}  # client address -> its open connections
        self.pace = ErrorPace(error_rate)  # error answers per client address
        self.max_body_bytes = max_body_bytes
        self.limits = limits
        self.cond = threading.Condition()
        self.connections: dict = {}  # socket -> its thread
        self.busy: set = set()  # sockets with a request being read, run or answered
        self.stopping = False  # no new connections or requests
        self.closing = False  # grace over: every connection is being closed
        self.refused, self.refusal_logged = 0, -1e9
        # Socket -> when its request's line and headers, then its body, must have arrived:
        # a client trickling a byte now and then passes every read timeout, so a reaper
        # cuts it off.
        self.deadlines: dict = {}
        super().__init__(address, _Handler)

    def reap(self, stop: threading.Event) -> None:
        """Closes connections whose request has not arrived in full by its deadline."""
        while not stop.wait(min(self.read_timeout, 0.5)):
            now = time.monotonic()
            with self.cond:
                late = [sock for sock, deadline in self.deadlines.items() if deadline < now]
                for sock in late:
                    del self.deadlines[sock]
            self.pace.forget(now)
            for sock in late:
                logger.debug("REST: a request did not arrive by its deadline; closing it")
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def arrived(self, sock) -> None:
        """The request on `sock` has arrived in full (or failed): no deadline any more."""
        with self.cond:
            self.deadlines.pop(sock, None)

    def process_request(self, request, client_address):
        peer = client_address[0]
        with self.cond:
            if self.stopping:
                refusal = "the server is shutting down"
            elif len(self.connections) >= self.max_connections:
                refusal = (f"too many connections (limit {self.max_connections}); "
                           "retry later")
            elif self.per_address.get(peer, 0) >= self.max_per_address:
                refusal = (f"too many connections from one address (limit "
                           f"{self.max_per_address}); retry later")
            else:
                refusal = None
                thread = threading.Thread(target=self._serve, args=(request, client_address),
                                          name=f"rest-{client_address[1]}", daemon=True)
                self.connections[request] = thread
                self.per_address[peer] = self.per_address.get(peer, 0) + 1
        if refusal is not None:
            self.refused += 1
            if time.monotonic() - self.refusal_logged > 10:  # at most one warning per 10 s
                self.refusal_logged = time.monotonic()
                logger.warning("REST: refused %d connection(s) (latest from %s): %s",
                               self.refused, client_address[0], refusal)
                self.refused = 0
            _refuse(request, refusal)
            return
        try:
            thread.start()
        except BaseException:
            with self.cond:
                self.connections.pop(request, None)
                self._left(peer)
            raise

    def _left(self, peer) -> None:
        """A connection from `peer` closed (holding `cond`)."""
        count = self.per_address.get(peer, 0) - 1
        if count > 0:
            self.per_address[peer] = count
        else:
            self.per_address.pop(peer, None)

    def shutdown_request(self, request):  # only after a failed thread start; must not block
        try:
            request.close()
        except OSError:
            pass

    def _serve(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._linger(request)
            with self.cond:
                self.connections.pop(request, None)
                self._left(client_address[0])
                self.busy.discard(request)
                self.cond.notify_all()
            try:
                request.close()
            except OSError:
                pass

    def _linger(self, sock: socket.socket) -> None:
        """Half-closes, then drains what the client still sends (for a while), so the
        kernel does not reset the connection before the client has read our answer.

        A client still sending after `_LINGER_BYTES` (a body refused before it was read in
        full) is not read any further: the connection stays open, unread, until the client
        hangs up or the linger time is over, so that the client waits on its own full
        send buffer, not on our reads. A client replaying refused bodies in a loop
        otherwise resends as fast as the loopback carries them, on the cores the good
        requests use (bench/RESULTS.md, "Refused bodies held, not read")."""
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + min(self.read_timeout, _LINGER_SECONDS)
            drained = 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if drained >= _LINGER_BYTES:
                    _wait_hangup(sock, remaining)
                    return
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    return
                drained += len(chunk)
        except OSError:
            pass

    def handle_error(self, request, client_address):
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            logger.debug("REST connection from %s: %s", client_address, err)
        else:
            logger.exception("REST connection from %s failed", client_address)

    def begin(self, sock) -> bool:
        """A request started arriving on `sock` (its first byte): its line and headers must
        arrive within `header_timeout`. False: the server is closing."""
        with self.cond:
            if self.closing:
                return False
            self.busy.add(sock)
            self.deadlines[sock] = time.monotonic() + self.header_timeout
            return True

    def body_deadline(self, sock, length: int) -> None:
        """The headers arrived; the `length`-byte body must arrive at `min_body_rate`
        (after one read timeout)."""
        rate = self.min_body_rate
        with self.cond:
            if sock in self.deadlines:
                self.deadlines[sock] = (time.monotonic() + self.read_timeout
                                        + (length / rate if rate > 0 else 5 * self.read_timeout))

    def end(self, sock) -> None:
        with self.cond:
            self.busy.discard(sock)
            self.deadlines.pop(sock, None)
            self.cond.notify_all()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection: requests one after another (keep-alive) until an error or close."""

    protocol_version = "HTTP/1.1"
    _counter: _ValueCounter | None = None  # the values of the body read, counted
    server_version = "tfrec"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.read_timeout  # every socket read and write
        super().setup()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        logger.debug("rest: %s " + fmt, self.client_address[0], *args)

    def handle_expect_100(self):
        return True  # "100 Continue" is sent only once the body is known to be acceptable

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, headers too long...) as JSON.

        A request line whose version is not HTTP/1.x (`PRI * HTTP/2.0`, `GET / HTTP/9.9`)
        leaves http.server's version at HTTP/0.9, which has no status line: the answer
        is given as HTTP/1.1 (505 or 400), and the connection closed.
        """
        if message is None:
            message = self.responses.get(code, ("error",))[0]
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = "HTTP/1.1"
            self.close_connection = True
        self._send(code, {"error": message})

    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        if "error" in payload:
            payload = {**payload, "error": capped(str(payload["error"]))}
        data = json.dumps(payload).encode("utf-8")
        if code >= 400 or self.server.stopping:
            self.close_connection = True
        if code >= 400 and not self.server.stopping:
            self.server.pace.hold(self.client_address[0])
        self._responded = True
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_one_request(self):
        self.command, self.requestline, self.request_version = "", "", "HTTP/1.1"
        self._responded = False
        try:
            first = self.rfile.peek(1)  # the request's first byte starts its deadline
        except OSError:  # idle past the read timeout, or the client went away
            self.close_connection = True
            return
        if not first or not self.server.begin(self.connection):
            self.close_connection = True
            return
        try:
            line = self.rfile.readline(65537)
        except OSError:  # cut off at the header deadline, or the client went away
            self.close_connection = True
            self.server.end(self.connection)
            return
        if not line:
            self.close_connection = True
            self.server.end(self.connection)
            return
        try:
            self._request(line)
        except TimeoutError:
            self.close_connection = True
            if not self._responded:
                try:
                    self._send(408, {"error": "the request did not arrive within the read "
                                              f"timeout ({self.server.read_timeout:g} s)"})
                except OSError:
                    pass
        except OSError as err:
            logger.debug("REST connection from %s: %s", self.client_address[0], err)
            self.close_connection = True
        finally:
            self.server.end(self.connection)

    def _request(self, line: bytes) -> None:
        self.raw_requestline = line
        if len(line) > 65536:
            self.send_error(414, "request line over 65536 bytes")
            return
        if not self.parse_request():  # it answered (400, 431, 505...), or a blank line
            return
        if self.request_version == "HTTP/0.9":
            self.close_connection = True
            return
        if self.server.stopping:
            self._send(503, {"error": "the server is shutting down"}, {"Retry-After": "1"})
            return
        if self.command not in ("GET", "POST"):
            if self.command in _KNOWN_METHODS:
                self._send(405, {"error": f"method {self.command} is not allowed; the REST "
                                          "API takes GET (status, metadata) and POST "
                                          "(:predict)"}, {"Allow": "GET, POST"})
            else:
                self._send(501, {"error": f"unsupported method {self.command[:20]!r}"})
            return
        body = self._read_body()
        self.server.arrived(self.connection)
        if body is None:
            return
        try:
            payload = self._dispatch(body)
        except _Reply as reply:
            self._send(reply.status, {"error": reply.message}, reply.headers)
        except ServingError as err:
            self._send(_HTTP.get(err.code, 500), {"error": err.message})
        except Exception:  # keep serving; what failed, and where, is for the log only
            logger.exception("REST %s %s failed", self.command, self.path[:200])
            self._send(500, {"error": "internal error; the server log has the details"})
        else:
            self._send(200, payload)

    def _read_body(self) -> bytearray | None:
        """The whole body, or None once an error was answered (the connection then closes).

        A predict body's values are counted as it arrives (`_ValueCounter`): once the part
        read shows it holds more than a request may, it is refused without reading the rest.
        """
        self._counter = None
        if self.headers.get_all("Transfer-Encoding"):
            self._send(411, {"error": "Transfer-Encoding (chunked bodies) is not supported: "
                                      "send the body with a Content-Length header"})
            return None
        declared = self.headers.get_all("Content-Length")
        if not declared:
            if self.command == "POST":
                self._send(411, {"error": "POST needs a Content-Length header"})
                return None
            return b""
        values = {v.strip() for header in declared for v in header.split(",")}
        value = values.pop() if len(values) == 1 else None
        if value is None or not re.fullmatch(r"[0-9]{1,19}", value):
            self._send(400, {"error": f"malformed Content-Length {', '.join(declared)[:40]!r}: "
                                      "it must be one non-negative integer"})
            return None
        length = int(value)
        if length > self.server.max_body_bytes:
            self._send(413, {"error": f"the request body ({length:,} bytes) is over the limit "
                                      f"of {self.server.max_body_bytes:,} bytes (tfrec serve "
                                      "--max_request_bytes); it was not read"})
            return None
        if (length and self.headers.get("Expect", "").lower() == "100-continue"
                and self.request_version != "HTTP/1.0"):
            self.send_response_only(100)
            self.end_headers()
        server = self.server
        server.body_deadline(self.connection, length)
        counter = self._counter = self._value_counter()
        # Grown as it arrives, not made whole first: a zero-filled buffer of the declared
        # length (up to --max_request_bytes) costs a page fault per 4 KB and a memset, all
        # while this thread holds the interpreter, even for a body refused after 3 MB.
        body, done = bytearray(), 0
        started = time.monotonic()
        while done < length:
            part = self.rfile.read1(min(length - done, 1 << 20))  # TimeoutError: 408
            if not part:
                self._send(400, {"error": f"the body ended after {done} of the {length} "
                                          "bytes of its Content-Length"})
                return None
            body += part
            done = len(body)
            if counter is not None and done < length and counter.update(body, done):
                self._send(400, {"error": _over_values(server.limits,
                                                       "it was not read in full, nor parsed")})
                return None
            late = time.monotonic() - started - server.read_timeout
            if done < length and late > 0 and done < server.min_body_rate * late:
                self._send(408, {"error": f"the body arrived at under "
                                          f"{server.min_body_rate:,.0f} bytes/s (tfrec serve "
                                          "--rest_api_min_bytes_per_second)"})
                return None
        return body

    def _value_counter(self) -> _ValueCounter | None:
        """A counter of the body's values for a predict POST, when the server has limits."""
        limits = self.server.limits
        if limits is None or self.command != "POST":
            return None
        match = _PATH.match(self.path.split("?", 1)[0])
        if not match or match["verb"] != ":predict":
            return None
        return _ValueCounter(_most_values(limits))

    def _dispatch(self, body: bytes) -> dict:
        path = self.path.split("?", 1)[0]
        match = _PATH.match(path)
        if not match:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Malformed request: {self.command} {path[:200]}")
        # A name or label a client percent-encoded (a space, a letter beyond ASCII), as
        # URLs carry them.
        name, verb = _decoded(match["name"]), match["verb"]
        label = None if match["label"] is None else _decoded(match["label"])
        version = int(match["version"]) if match["version"] else None
        if verb in (":classify", ":regress"):
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{verb[1:]} is not served; use :predict")
        if verb == ":predict":
            if self.command != "POST":
                raise _Reply(405, "predict takes POST", {"Allow": "POST"})
            return self._predict(name, version, label, body)
        if self.command != "GET":
            raise _Reply(405, "status and metadata take GET; only :predict takes POST",
                         {"Allow": "GET"})
        manager = self.server.predictor.manager
        if verb == "/metadata":
            served = manager.find(name, version, label)
            defs = {k: json_format.MessageToDict(v) for k, v in served.signature_defs.items()}
            return {"model_spec": {"name": served.name, "signature_name": "",
                                   "version": str(served.number)},
                    "metadata": {"signature_def": {"signature_def": defs}}}
        try:
            versions = manager.status(name, version, label)
        except ServingError as err:
            raise ServingError(err.code, err.public) from None
        return {"model_version_status": [
            {"version": str(v.number), "state": v.state,
             "status": {"error_code": "UNKNOWN" if v.error else "OK",
                        "error_message": _public_status(v)}} for v in versions]}

    def _predict(self, name, version, label, raw: bytes) -> dict:
        if not raw or raw.isspace():
            raise _invalid("the request body is empty; send a JSON object with 'instances' "
                           "(row format) or 'inputs' (columnar)")
        limits = self.server.limits
        most = None if limits is None else limits.max_elements
        if most is not None:
            counter = self._counter  # the values counted while the body arrived
            if counter is None:
                counter = _ValueCounter(_most_values(limits))
            if counter.finish(raw):
                raise _invalid(_over_values(limits, "it was not parsed"))
        body = _parse_json(raw)
        if not isinstance(body, dict):
            raise _invalid("the body must be a JSON object with 'instances' or 'inputs'")
        signature = body.get("signature_name", "")
        if not isinstance(signature, str):
            raise _invalid("'signature_name' must be a string")
        try:
            arrays, rows = _arrays_from_json(body, most)
        except RecursionError:
            raise _invalid(f"an input nests more than {_MAX_DEPTH} lists deep") from None
        _, _, _, outputs = self.server.predictor.run(name, version, label, signature, arrays,
                                                     cast=True, rows=rows)
        return _predictions(outputs, rows)


def _most_values(limits) -> int:
    """The values a predict body may hold: the row format repeats a scalar input (k) in
    every instance, up to max_batch."""
    return limits.max_elements + limits.max_batch


def _over_values(limits, fate: str) -> str:
    """The refusal of a body holding more than `_most_values`; `fate`: what was not done."""
    return (f"the body holds more than {_most_values(limits):,} values: over the limit of "
            f"{limits.max_elements:,} values per request (tfrec serve --max_request_elements), "
            "with one more per row allowed for a scalar input repeated in every row "
            f"(--max_batch); {fate}")


def _public_status(version) -> str:
    """A version's status message for REST clients: what happened, without the paths and
    exception text that GetModelStatus (gRPC) and the server log give."""
    if version.error:
        return f"version {version.number} failed to load; see the server log"
    if version.state == "START":
        return (f"version {version.number} is not complete yet; it loads once its files are "
                "all there")
    if version.detail:
        return ("still served: the model's base path has no version that loads yet; see "
                "the server log")
    return ""


class RestServer:
    """The REST API on `host:port` (0: any free port, see `.port`).

    Args:
      predictor: runs predict calls (`.run`) and has the version manager (`.manager`).
      read_timeout: seconds a socket read or write may wait: a request (line,
        headers, each part of the body) that does not arrive in time gets 408,
        and an idle keep-alive connection is closed after it.
      max_connections: open connections at once; over it a new connection gets
        503 and is closed.
      max_connections_per_address: open connections from one client address at
        once (503 over it), so that one peer cannot hold them all.
      header_timeout: seconds a request's line and headers may take from its
        first byte (None: `read_timeout`); past it the connection is closed.
      min_body_rate: bytes/s a body must average once `read_timeout` has passed
        (408 under it; 0: none, a body then gets 6 read timeouts in all).
      error_rate: error answers a second one client address gets past a burst of
        as many; further ones are held to that pace (at most
        `pacing.MAX_DELAY` s each; `tfrec.serving.pacing.ErrorPace`). 0: none held.
      max_body_bytes: the largest request body (413 over it).
      limits: the predictor's `RequestLimits`: a predict body holding more than
        `max_elements` values (plus `max_batch`, for a scalar input the row format
        repeats in every row) is refused before it is parsed, as soon as the part of
        it read shows that (the rest is not read), as is a list of string lists that
        padding would make larger. None: no count (the model's checks only).
    """

    def __init__(self, predictor, host: str, port: int, *,
                 read_timeout: float = ServeConfig.rest_api_timeout_seconds,
                 max_connections: int = ServeConfig.rest_api_max_connections,
                 max_body_bytes: int = MAX_MESSAGE_BYTES, limits=None,
                 max_connections_per_address: int | None = None,
                 header_timeout: float | None = None,
                 min_body_rate: float = ServeConfig.rest_api_min_bytes_per_second,
                 error_rate: float = 0.0):
        if not read_timeout > 0:
            raise ValueError(f"read_timeout must be > 0 seconds, got {read_timeout}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
        if max_connections_per_address is not None and max_connections_per_address < 1:
            raise ValueError("max_connections_per_address must be >= 1, got "
                             f"{max_connections_per_address}")
        if header_timeout is not None and not header_timeout > 0:
            raise ValueError(f"header_timeout must be > 0 seconds, got {header_timeout}")
        if min_body_rate < 0:
            raise ValueError(f"min_body_rate must be >= 0, got {min_body_rate}")
        if error_rate < 0:
            raise ValueError(f"error_rate must be >= 0, got {error_rate}")
        self.predictor = predictor
        self.httpd = _HTTPServer((host, port), predictor, read_timeout, max_connections,
                                 max_body_bytes, limits, max_connections_per_address,
                                 header_timeout, min_body_rate, error_rate)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True,
                                        name="rest-accept")
        self._reaper_stop = threading.Event()
        self._reaper = threading.Thread(target=self.httpd.reap, args=(self._reaper_stop,),
                                        daemon=True, name="rest-reaper")
        self._lock = threading.Lock()
        self._started = self._stopped = False

    def start(self) -> None:
        with self._lock:
            if self._started or self._stopped:
                return
            self._started = True
        self._thread.start()
        self._reaper.start()

    def stop(self, grace: float = ServeConfig.grace_period_seconds) -> None:
        """Stops accepting; requests in flight get `grace` seconds to finish, then every
        connection is closed. A request arriving meanwhile gets 503 (and a close)."""
        deadline = time.monotonic() + max(grace, 0.0)
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        httpd = self.httpd
        self._reaper_stop.set()
        with httpd.cond:
            httpd.stopping = True
        if started:
            httpd.shutdown()  # the accepting loop ends
        httpd.server_close()  # new connections are refused
        with httpd.cond:
            while httpd.busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                httpd.cond.wait(remaining)
            httpd.closing = True
            if httpd.busy:
                logger.warning("REST: %d request(s) still running after the %g s grace "
                               "period; closing their connections", len(httpd.busy), grace)
            for sock in httpd.connections:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(httpd.connections.values())
        join_until = time.monotonic() + 1.0
        for thread in threads:
            thread.join(max(0.0, join_until - time.monotonic()))


def _decoded(part: str) -> str:
    """A percent-encoded path part as text; escapes that are not UTF-8 are refused."""
    try:
        return urllib.parse.unquote(part, errors="strict")
    except UnicodeDecodeError:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the path's {reprlib.repr(part)} is not percent-encoded UTF-8") \
            from None
