"""Files that are not tables (the model, its checkpoints, reports) on a local path or a cloud URI.

One place for non-Delta I/O, through pyarrow's filesystems: a local or relative path, `file://`, `s3://`, `gs://`,
`hdfs://`, and `dbfs:/` (read through the `/dbfs` mount every Databricks node has).
"""

from __future__ import annotations

import os

import pyarrow.fs as pafs


def write_bytes(location: str, data: bytes) -> None:
    filesystem, path = _resolve(location)
    filesystem.create_dir(os.path.dirname(path), recursive=True)
    with filesystem.open_output_stream(path) as out:
        out.write(data)


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
