"""Files that are not tables (the model, its checkpoints, reports) on a local path or a cloud URI.

One place for non-Delta I/O, through pyarrow's filesystems: a local or relative path, `file://`, `s3://`, `gs://`,
`hdfs://`, and `dbfs:/` (read through the `/dbfs` mount every Databricks node has).
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file at once: readers see the old content or the new, never a part (locally through a
    temporary file and a rename; an object store's PUT is atomic already)."""
    filesystem, path = _resolve(location)
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    if not isinstance(filesystem, pafs.LocalFileSystem):
        with filesystem.open_output_stream(path) as out:
            out.write(data)
        return
    partial = f"{path}.partial-{os.getpid()}"
    with filesystem.open_output_stream(partial) as out:
        out.write(data)
    os.replace(partial, path)


def read_bytes(location: str) -> bytes:
    filesystem, path = _resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def exists(location: str) -> bool:
    filesystem, path = _resolve(location)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def list_names(folder: str) -> list[str]:
    """The file names directly in `folder`, sorted; empty when it does not exist."""
    filesystem, path = _resolve(folder)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path))
    return sorted(os.path.basename(i.path) for i in infos if i.type == pafs.FileType.File)


def list_tree(location: str) -> list[tuple[str, int, int]]:
    """(location, size, modification time in ns) of every file at or under `location`, each named as `location` is
    (the same scheme: `dbfs:/`, `s3://`, a local path); empty when nothing is there."""
    filesystem, path = _resolve(location)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [(location, info.size, info.mtime_ns)]
    if info.type != pafs.FileType.Directory:
        return []
    prefix = location.rstrip("/")
    found = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(
        (prefix + "/" + os.path.relpath(i.path, path), i.size, i.mtime_ns)
        for i in found
        if i.type == pafs.FileType.File
    )


def read_head(location: str, size: int = 65_536) -> bytes:
    """The first `size` bytes of a file, decompressed when its name says gzip, bz2, lz4 or zstd."""
    filesystem, path = _resolve(location)
    with filesystem.open_input_stream(path, compression="detect") as stream:
        return stream.read(size)


def delete_file(location: str) -> None:
    filesystem, path = _resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        filesystem.delete_file(path)


def delete_folder(folder: str) -> None:
    filesystem, path = _resolve(folder)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        filesystem.delete_dir(path)


def is_local(location: str) -> bool:
    """A path on this machine's file system (relative or absolute), not a URI or `dbfs:/`."""
    return "://" not in location and not location.startswith("dbfs:")


def join(folder: str, *names: str) -> str:
    return "/".join([folder.rstrip("/"), *names])


def _resolve(location: str) -> tuple[pafs.FileSystem, str]:
    if location.startswith("dbfs:"):
        location = "/dbfs/" + location.removeprefix("dbfs:").lstrip("/")
    if is_local(location):
        location = os.path.abspath(location)
    return pafs.FileSystem.from_uri(location)
