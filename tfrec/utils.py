"""Small helpers shared by the commands."""

from __future__ import annotations

from pathlib import Path

from tfrec.errors import InputError


def ensure_folder(path: str | Path, what: str = "output folder") -> Path:
    """Creates a folder (and parents); a user-caused failure becomes an InputError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{what} path exists and is not a folder", path=str(path)) from None
    except PermissionError:
        raise InputError(f"cannot create the {what} (permission denied)",
                         path=str(path)) from None
    except OSError as err:
        raise InputError(f"cannot create the {what}: {err.strerror}", path=str(path)) from None
    return path
