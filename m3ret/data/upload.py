"""An uploaded file made safe to read: size limits, and a zip of a DICOM series checked before anything is unpacked.

A zip is recognised by its content (the local file header magic), never by its name. Everything a zip bomb or a
hostile archive relies on is refused from the central directory alone, before one byte is decompressed: too many
members, too much declared data, an implausible compression ratio, absolute or `..` paths, symbolic links,
encryption. Members are then written under generated names, so even a name that slipped through could not choose
where it lands, and every write is capped at the member's declared size.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath

from m3ret.config import ServeConfig
from m3ret.data.errors import InputTooLargeError, UnreadableInputError, UnsupportedInputError

MB = 1 << 20
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# A suffix kept from the client's file name (`.nii.gz`, `.dcm`): letters and digits only, never a path.
_SAFE_SUFFIX = re.compile(r"^(\.[A-Za-z0-9]{1,8}){1,2}$")
# Finder's resource-fork copies of every file (`__MACOSX/._name`): never DICOM, always present in macOS zips.
_MACOS_FORKS = "__MACOSX/"
_CHUNK = 1 << 20


def unpack_upload(path: Path, filename: str, cfg: ServeConfig, workdir: Path) -> Path:
    """A saved upload -> what `m3ret.data.readers.read` accepts: the file itself (moved into `workdir` under a safe
    name), or for a zip the folder in `workdir` holding its members (one DICOM series).

    `filename` is the client's name, used for messages and for a harmless suffix only. Raises InputTooLargeError
    (upload or archive beyond `cfg`'s limits, zip bomb), UnsupportedInputError (hostile or encrypted archive) or
    UnreadableInputError (corrupt archive), each naming `filename` and the reason.
    """
    path, workdir = Path(path), Path(workdir)
    size = path.stat().st_size
    if size > cfg.max_upload_mb * MB:
        raise InputTooLargeError(filename, f"upload is {size / MB:.1f} MB; the limit is {cfg.max_upload_mb} MB")
    workdir.mkdir(parents=True, exist_ok=True)
    with path.open("rb") as fh:
        head = fh.read(4)
    if head in _ZIP_MAGIC:
        return _unpack_zip(path, filename, cfg, workdir / "series")
    target = workdir / f"upload{_suffix(filename)}"
    shutil.move(path, target)
    return target


def _suffix(filename: str) -> str:
    suffix = "".join(PurePosixPath(PureWindowsPath(filename).name).suffixes[-2:])
    return suffix if _SAFE_SUFFIX.match(suffix) else ""


def _unpack_zip(path: Path, filename: str, cfg: ServeConfig, out: Path) -> Path:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise UnreadableInputError(filename, f"corrupt zip archive: {err}") from err
    with archive:
        members = _checked_members(archive, filename, cfg)
        out.mkdir(parents=True, exist_ok=False)
        for i, info in enumerate(members):
            _extract_capped(archive, info, out / f"{i:06d}.dcm", filename)
    return out


def _checked_members(archive: zipfile.ZipFile, filename: str, cfg: ServeConfig) -> list[zipfile.ZipInfo]:
    """The file members to extract, after every check that needs only the central directory."""
    infos = archive.infolist()
    if len(infos) > cfg.max_zip_members:
        raise InputTooLargeError(filename, f"zip holds {len(infos)} members; the limit is {cfg.max_zip_members}")
    for info in infos:
        _check_name(info, filename)
    members = [i for i in infos if not i.is_dir() and not i.filename.startswith(_MACOS_FORKS)]
    if not members:
        raise UnsupportedInputError(filename, "zip archive holds no files")
    declared = sum(i.file_size for i in members)
    if declared > cfg.max_unzipped_mb * MB:
        raise InputTooLargeError(
            filename, f"zip declares {declared / MB:.1f} MB uncompressed; the limit is {cfg.max_unzipped_mb} MB"
        )
    compressed = sum(i.compress_size for i in members)
    ratio = declared / max(compressed, 1)
    if ratio > cfg.max_zip_ratio:
        raise InputTooLargeError(
            filename, f"zip compression ratio {ratio:.0f}:1 looks like a zip bomb (limit {cfg.max_zip_ratio:.0f}:1)"
        )
    return members


def _check_name(info: zipfile.ZipInfo, filename: str) -> None:
    name = info.filename
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or PureWindowsPath(name).drive or ".." in pure.parts:
        raise UnsupportedInputError(filename, f"zip member {name!r} points outside the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsupportedInputError(filename, f"zip member {name!r} is a symbolic link")
    if info.flag_bits & 0x1:
        raise UnsupportedInputError(filename, f"zip member {name!r} is encrypted")


def _extract_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, filename: str) -> None:
    """Copy one member, refusing it the moment it yields more bytes than its header declared."""
    written = 0
    try:
        with archive.open(info) as src, target.open("wb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise InputTooLargeError(filename, f"zip member {info.filename!r} is larger than it declares")
                dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as err:
        raise UnreadableInputError(filename, f"zip member {info.filename!r} cannot be unpacked: {err}") from err
