"""Writing output files so that a failed write loses nothing.

Every file the engine writes for a user (images, model files, reports) goes through :func:`atomic_output`:
the data goes to a temporary file in the target's folder, which is moved into place in one step only once
it is complete. A failure on the way (disk full, a file-size limit, an encoder error, Ctrl-C) removes the
temporary file: the target is never left half-written, and a file that ``overwrite`` would replace is kept.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


class OutputError(OSError):
    """A file could not be written; the message names it and says that nothing was lost."""


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, move it to ``path``.

    Without ``overwrite`` an existing ``path`` is never replaced, even one that appeared after the caller's
    own check: the move is a hard link, which fails when the name exists.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    # Created here (not by mkstemp) so the file gets the user's umask permissions, as a plain open() would.
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = temporary.stat().st_mode
    try:
        yield temporary
        # a writer may have recreated the file (safetensors' save_file makes it readable by its owner only)
        os.chmod(temporary, mode)
        _move_into_place(temporary, path, overwrite)
    except OSError as error:
        kept = " (the existing file is unchanged)" if path.exists() else ""
        reason = error.strerror or str(error)
        raise OutputError(f"cannot write {path}: {reason}; nothing was written{kept}.") from error
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def _move_into_place(temporary: Path, path: Path, overwrite: bool) -> None:
    with open(temporary, "rb+") as file:  # on disk before the rename makes it visible
        os.fsync(file.fileno())
    if overwrite:
        os.replace(temporary, path)
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists (pass overwrite to replace it)") from None
    except OSError:  # a file system without hard links: check, then rename (a small race, never a partial file)
        if path.exists():
            raise FileExistsError(f"{path} already exists (pass overwrite to replace it)") from None
        os.replace(temporary, path)
