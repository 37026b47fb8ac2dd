"""Reading TF Serving's `models.config` (a `ModelServerConfig` text proto)."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfrec.errors import InputError
from tfrec.serving.errors import shown


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One served model.

    Attributes:
      name: the model name clients ask for.
      base_path: folder holding integer version folders.
      policy: "latest" (the newest `latest_n`), "all", or "specific".
      latest_n: how many of the newest versions to serve under "latest".
      specific: the versions to serve under "specific".
      labels: version label -> version.
    """

    name: str
    base_path: Path
    policy: str = "latest"
    latest_n: int = 1
    specific: tuple[int, ...] = ()
    labels: dict = dataclasses.field(default_factory=dict)

    def wanted(self, available: list[int]) -> list[int]:
        """The versions this policy serves, out of those on disk."""
        available = sorted(available)
        if self.policy == "all":
            return available
        if self.policy == "specific":
            return [v for v in available if v in self.specific]
        return available[-self.latest_n:] if available else []


def _control_character(text: str) -> bool:
    return any(unicodedata.category(char) == "Cc" for char in text)


def parse_model_config(text: str, source: str | None = None,
                       relative_to: Path | None = None) -> list[ModelEntry]:
    """Parses a `model_config_list` text proto into ModelEntry objects.

    Raises:
      InputError: the text is not a ModelServerConfig with a model_config_list,
        a model has no name or base_path, or a name repeats.
    """
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise InputError(f"not a TF Serving model config: {err}", path=source) from None
    if config.WhichOneof("config") == "custom_model_config":
        raise InputError("custom_model_config is not supported: list the models in a "
                         "model_config_list", path=source)
    entries = []
    seen = set()
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise InputError("every model needs a name and a base_path", path=source)
        for what, value in (("name", model.name), ("base_path", model.base_path),
                            *(("version label", label) for label in model.version_labels)):
            if _control_character(value):
                raise InputError(f"model {what} {shown(value)!r} holds a control "
                                 "character (a line break, an escape): refused, as it would "
                                 "forge the server's log lines", path=source)
        if model.name in seen:
            raise InputError(f"model {model.name!r} is listed twice", path=source)
        seen.add(model.name)
        if model.model_platform not in ("", "tensorflow"):
            raise InputError(f"model {model.name!r}: platform {model.model_platform!r} is not "
                             "supported (only 'tensorflow')", path=source)
        base = Path(model.base_path)
        if not base.is_absolute() and relative_to is not None:
            base = relative_to / base
        policy = model.model_version_policy
        which = policy.WhichOneof("policy_choice")
        if which == "all":
            entry = ModelEntry(model.name, base, "all")
        elif which == "specific":
            entry = ModelEntry(model.name, base, "specific",
                               specific=tuple(policy.specific.versions))
        else:
            n = policy.latest.num_versions if which == "latest" else 1
            entry = ModelEntry(model.name, base, "latest", latest_n=max(n, 1))
        labels = dict(model.version_labels)
        entries.append(dataclasses.replace(entry, labels=labels))
    return entries


def read_model_config(path: str | Path) -> list[ModelEntry]:
    path = Path(path)
    if not path.exists():
        raise InputError("model config file not found", path=str(path))
    return parse_model_config(path.read_text(), str(path), Path.cwd())


def model_roots(flag: str | None, entries: list[ModelEntry]) -> list[Path]:
    """The folders HandleReloadConfigRequest's base paths must be under (symlinks resolved).

    Args:
      flag: `--model_roots`, comma-separated folders (relative: to the working
        directory at start); None: the folders holding `entries`' base paths.
      entries: the model config file's models, at start.
    """
    if flag is None:
        roots = {entry.base_path.parent for entry in entries}
    else:
        roots = {Path(part.strip()) for part in flag.split(",") if part.strip()}
    return sorted({Path(os.path.realpath(Path.cwd() / root)) for root in roots})


def outside_roots(entries: list[ModelEntry], roots: list[Path]) -> tuple[str, str] | None:
    """The first base path the reload RPC must refuse: ("relative" or "outside", message),
    or None if every base path is absolute and under one of `roots`."""
    for entry in entries:
        if not entry.base_path.is_absolute():
            return "relative", (f"model {entry.name!r}: base_path {str(entry.base_path)!r} is "
                                "relative; give an absolute path under the model roots "
                                "(relative paths are not read against the server's folder)")
        real = Path(os.path.realpath(entry.base_path))
        if not any(real == root or root in real.parents for root in roots):
            shown = ", ".join(map(str, roots)) or "none"
            return "outside", (f"model {entry.name!r}: base_path {entry.base_path} is outside "
                               f"the model roots ({shown}; set them with --model_roots)")
    return None
