"""errors.py: the command-line tools' one-paragraph errors (tool_main) and the write-error message."""

from __future__ import annotations

import errno

import pytest

from metarun.errors import ConfigError, tool_main, write_error_message


def test_a_read_only_or_full_place_is_exit_2_with_the_path(capsys):
    def write():
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out")

    assert tool_main("metarun-x", write) == 2
    err = capsys.readouterr().err
    assert err.startswith("metarun-x: error: cannot write /mnt/ro/out: the file system is read-only") and "--out" in err
    assert "the disk is full" in write_error_message(OSError(errno.ENOSPC, "No space left on device", "/d/f"))


def test_a_user_error_is_exit_2_and_a_bug_is_a_traceback(capsys):
    def refuse():
        raise ConfigError("x=1 is not valid")

    assert tool_main("metarun-x", refuse) == 2 and "metarun-x: error: x=1 is not valid" in capsys.readouterr().err
    assert tool_main("metarun-x", lambda: 3) == 3 and tool_main("metarun-x", lambda: {"a": 1}) == 0

    def bug():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):  # not the user's to fix: the traceback is kept
        tool_main("metarun-x", bug)
