"""File helpers of the harness: atomic writes and temporary folders honour the user's umask."""

import os
import stat

import pytest

from common.harness import io


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_current_umask_is_read_without_changing_it(umask):
    assert io.current_umask() == umask
    assert io.current_umask() == umask


def test_atomic_write_honours_the_umask(tmp_path, umask):
    target = tmp_path / "sub" / "metrics.json"
    io.atomic_write_json(target, {"a": 1})
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)
    io.atomic_write_bytes(target, b"new")  # a rewrite gets the same mode
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temporary left


def test_make_temp_dir_honours_the_umask(tmp_path, umask):
    a = io.make_temp_dir(".ci.tmp-", tmp_path)
    b = io.make_temp_dir(".ci.tmp-", tmp_path)
    assert a != b and a.parent == b.parent == tmp_path and a.name.startswith(".ci.tmp-")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert stat.S_IMODE(a.stat().st_mode) == 0o777 & ~umask == stat.S_IMODE(plain.stat().st_mode)
