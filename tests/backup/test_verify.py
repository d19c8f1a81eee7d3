"""Archive verification with real tar, zstd, gzip and bzip2 on generated archives."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from pveguard.backup.verify import CATALOGUE_NAME, verify_archive, verify_directory
from pveguard.errors import OperationError

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("tar", "zstd", "gzip", "bzip2")), reason="tar/zstd/gzip/bzip2 missing"
)


def _rootfs(root: Path) -> Path:
    rng = random.Random(3)
    for d in ("etc", "usr/bin", "var/lib/app", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "hostname").write_text("ct101\n")
    (root / "var" / "lib" / "app" / "data.bin").write_bytes(rng.randbytes(300_000))
    for i in range(50):
        (root / "usr" / "bin" / f"tool{i}").write_text(f"#!/bin/sh\necho {i}\n" * 50)
    return root


def _make(dump: Path, name: str, src: Path) -> Path:
    path = dump / name
    compress = {"zst": ["zstd", "-q", "-c"], "gz": ["gzip", "-c"], "bz2": ["bzip2", "-c"]}
    ext = name.rsplit(".", 1)[-1]
    tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE)
    with path.open("wb") as out:
        if ext in compress:
            subprocess.run(compress[ext], stdin=tar.stdout, stdout=out, check=True)
        else:
            assert tar.stdout is not None
            shutil.copyfileobj(tar.stdout, out)
    assert tar.wait() == 0
    return path


def _flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * where)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return _rootfs(tmp_path / "rootfs")


@pytest.mark.parametrize("ext", ["tar.zst", "tar.gz", "tar.bz2", "tar"])
def test_good_archive(tmp_path: Path, src: Path, ext: str) -> None:
    path = _make(tmp_path, f"vzdump-lxc-101-2024_01_01-02_00_00.{ext}", src)
    result = verify_archive(path)
    assert result.ok, result.problems
    assert result.entries == 1 + len(list(src.rglob("*")))  # "./" plus every dir and file
    assert result.size == path.stat().st_size
    assert len(result.sha256) == 64


@pytest.mark.parametrize("ext", ["tar.zst", "tar.gz", "tar.bz2"])
def test_one_corrupt_byte_fails_and_is_named(tmp_path: Path, src: Path, ext: str) -> None:
    path = _make(tmp_path, f"vzdump-lxc-101-2024_01_01-02_00_00.{ext}", src)
    _flip_byte(path)
    result = verify_archive(path)
    assert not result.ok
    assert result.filename == path.name
    assert any("decompression test failed" in p for p in result.problems), result.problems


def test_zstd_checksum_error_is_reported(tmp_path: Path, src: Path) -> None:
    path = _make(tmp_path, "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst", src)
    _flip_byte(path, 0.9)
    result = verify_archive(path)
    assert not result.ok
    assert any("zstd" in p for p in result.problems)


def test_truncated_archive(tmp_path: Path, src: Path) -> None:
    path = _make(tmp_path, "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst", src)
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    assert not verify_archive(path).ok


def test_uncompressed_tar_change_caught_by_catalogue(tmp_path: Path, src: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    path = _make(dump, "vzdump-lxc-101-2024_01_01-02_00_00.tar", src)
    first = verify_directory(dump)
    assert [r.ok for r in first] == [True]
    catalogue = json.loads((dump / CATALOGUE_NAME).read_text())
    assert catalogue["archives"][path.name]["sha256"] == first[0].sha256
    # A flipped byte inside file data: tar's listing cannot notice (only headers carry
    # checksums), the recorded SHA-256 does.
    offset = path.read_bytes().index(b"echo 7") + 5
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert verify_archive(path).ok  # structure still fine
    again = verify_directory(dump)
    assert not again[0].ok
    assert any("SHA-256 differs" in p for p in again[0].problems)


def test_directory_run_names_the_bad_one_and_forgets_pruned(tmp_path: Path, src: Path) -> None:
    dump = tmp_path / "dump"
    dump.mkdir()
    good = _make(dump, "vzdump-lxc-101-2024_01_01-02_00_00.tar.zst", src)
    bad = _make(dump, "vzdump-lxc-101-2024_01_02-02_00_00.tar.zst", src)
    (dump / "vzdump-lxc-101-2024_01_02-02_00_00.log").write_text("log\n")
    verify_directory(dump)
    _flip_byte(bad)
    results = {r.filename: r for r in verify_directory(dump)}
    assert results[good.name].ok and not results[bad.name].ok
    os.unlink(good)
    verify_directory(dump)
    entries = json.loads((dump / CATALOGUE_NAME).read_text())["archives"]
    assert list(entries) == [bad.name] and entries[bad.name]["last_ok"] is False


def test_not_an_archive_name(tmp_path: Path) -> None:
    f = tmp_path / "backup.tar.zst"
    f.write_bytes(b"x")
    with pytest.raises(OperationError, match="not a vzdump archive name"):
        verify_archive(f)


def test_empty_tar_is_a_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    path = tmp_path / "vzdump-lxc-101-2024_01_01-02_00_00.tar"
    subprocess.run(["tar", "-cf", str(path), "-T", "/dev/null"], check=True)
    result = verify_archive(path)
    assert not result.ok and "no files" in result.problems[0]
