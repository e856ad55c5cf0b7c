"""unpack_upload: plain files moved under a safe name, DICOM series zips unpacked, hostile archives refused unread."""

from __future__ import annotations

import io
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import write_ct_series  # noqa: E402

from m3ret.config import ReadConfig, ServeConfig  # noqa: E402
from m3ret.data.errors import InputTooLargeError, UnreadableInputError, UnsupportedInputError  # noqa: E402
from m3ret.data.readers import read  # noqa: E402
from m3ret.data.upload import unpack_upload  # noqa: E402

CFG = ServeConfig(max_upload_mb=4, max_zip_members=8, max_unzipped_mb=2)


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_series_zip_unpacks_into_a_folder_read_accepts(tmp_path: Path) -> None:
    hu = np.random.default_rng(0).integers(-1000, 1000, size=(3, 16, 16)).astype(np.int16)
    files = write_ct_series(tmp_path / "series", hu)
    upload = _zip(tmp_path / "up", {f"scans/{p.name}": p.read_bytes() for p in files} | {"scans/": b""})
    folder = unpack_upload(upload, "my scans.zip", CFG, tmp_path / "work")
    assert folder.is_dir() and folder.parent == tmp_path / "work"
    assert sorted(p.name for p in folder.iterdir()) == ["000000.dcm", "000001.dcm", "000002.dcm"]
    frames, meta = read(folder, ReadConfig())
    assert frames.shape[0] == 3 and meta["kind"] == "volume"


def test_macos_resource_forks_are_skipped(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", np.zeros((2, 8, 8), dtype=np.int16))
    members = {p.name: p.read_bytes() for p in files} | {f"__MACOSX/._{files[0].name}": b"\0\5\26\7fork"}
    folder = unpack_upload(_zip(tmp_path / "up.zip", members), "up.zip", CFG, tmp_path / "work")
    assert len(list(folder.iterdir())) == 2


def test_a_plain_file_is_moved_under_a_safe_name(tmp_path: Path) -> None:
    upload = tmp_path / "tmp123"
    upload.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    moved = unpack_upload(upload, "../../etc/brain scan.nii.gz", CFG, tmp_path / "work")
    assert moved == tmp_path / "work" / "upload.nii.gz" and moved.exists() and not upload.exists()
    other = tmp_path / "tmp456"
    other.write_bytes(b"data")
    assert unpack_upload(other, "weird.$(rm -rf)", CFG, tmp_path / "work2").name == "upload"


def test_an_oversized_upload_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "big"
    upload.write_bytes(b"\0" * (5 << 20))
    with pytest.raises(InputTooLargeError, match="limit is 4 MB") as err:
        unpack_upload(upload, "big.dcm", CFG, tmp_path / "work")
    assert err.value.path == "big.dcm"


def test_a_zip_bomb_is_refused_before_extraction(tmp_path: Path) -> None:
    # 1.5 MB of zeros deflates to about 1.5 kB: under the size limits, far beyond any plausible ratio
    bomb = _zip(tmp_path / "bomb.zip", {"a.dcm": b"\0" * (3 << 19)})
    assert bomb.stat().st_size < 10_000
    with pytest.raises(InputTooLargeError, match="zip bomb"):
        unpack_upload(bomb, "bomb.zip", CFG, tmp_path / "work")
    assert not (tmp_path / "work" / "series").exists()


def test_declared_uncompressed_size_is_capped(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).bytes(1 << 20)
    big = _zip(tmp_path / "big.zip", {f"{i}.dcm": noise for i in range(3)}, zipfile.ZIP_STORED)
    with pytest.raises(InputTooLargeError, match="limit is 2 MB"):
        unpack_upload(big, "big.zip", CFG, tmp_path / "work")


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    many = _zip(tmp_path / "many.zip", {f"{i}.dcm": bytes([i]) * 10 for i in range(9)}, zipfile.ZIP_STORED)
    with pytest.raises(InputTooLargeError, match="9 members"):
        unpack_upload(many, "many.zip", CFG, tmp_path / "work")


@pytest.mark.parametrize("name", ["../evil.dcm", "/etc/evil.dcm", "a/../../evil.dcm", "..\\evil.dcm", "C:/evil.dcm"])
def test_paths_out_of_the_archive_are_refused(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "t.zip", {"ok.dcm": b"x" * 10, name: b"y" * 10}, zipfile.ZIP_STORED)
    with pytest.raises(UnsupportedInputError, match="outside the archive"):
        unpack_upload(archive, "t.zip", CFG, tmp_path / "work")
    assert not (tmp_path / "evil.dcm").exists() and not (tmp_path / "work" / "series").exists()


def test_symlinks_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("link.dcm")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    (tmp_path / "l.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UnsupportedInputError, match="symbolic link"):
        unpack_upload(tmp_path / "l.zip", "l.zip", CFG, tmp_path / "work")


def test_a_member_larger_than_it_declares_is_cut_off(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "lie.zip", {"a.dcm": b"abcdefgh" * 64}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    # shrink the declared size in the central directory (offset 24 of its entry) to 16 bytes
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (16).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises((InputTooLargeError, UnreadableInputError)):
        unpack_upload(archive, "lie.zip", CFG, tmp_path / "work")


def test_a_corrupt_zip_is_unreadable(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(UnreadableInputError, match="corrupt zip"):
        unpack_upload(broken, "broken.zip", CFG, tmp_path / "work")
