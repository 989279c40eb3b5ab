"""A local Google Cloud Storage server for tests: ``python tests/gcs_emulator.py PORT BUCKET`` serves
``gcp-storage-emulator`` (in memory) on 127.0.0.1:PORT with BUCKET created, and prints ``ready`` once it listens.

Clients point at it with ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` (``xpsr_jax.paths`` passes it on to
TensorStore and to ArrayRecord's reader).

The emulator leaves out two parts of the GCS API that TensorStore's GCS driver relies on for its OCDBT manifests
(orbax's checkpoint format), so they are added here: media downloads carry the object's generation in the
``x-goog-generation`` header (without it TensorStore fails with "Malformed StorageGeneration"), and the
``ifGenerationMatch`` / ``ifGenerationNotMatch`` preconditions of uploads and downloads are honoured (412 / 304),
which TensorStore's read-modify-write of a manifest needs to be correct.
"""

from __future__ import annotations

import sys
import time
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> str:
    """The object's generation, "0" when it does not exist (GCS's convention for preconditions)."""
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _query(request, key: str) -> str | None:
    values = request.query.get(key)
    return values[0] if values else None


def _download(request, response, storage, *args, **kwargs):
    bucket, name = request.params["bucket_name"], request.params["object_id"]
    current = _generation(storage, bucket, name)
    match, not_match = _query(request, "ifGenerationMatch"), _query(request, "ifGenerationNotMatch")
    if current != "0" and match is not None and match != current:
        response.status = HTTPStatus.PRECONDITION_FAILED
        return None
    if current != "0" and not_match is not None and not_match == current:
        response.status = HTTPStatus.NOT_MODIFIED
        response["x-goog-generation"] = current
        return None
    _original_download(request, response, storage, *args, **kwargs)
    if current != "0":
        response["x-goog-generation"] = current
        response["x-goog-metageneration"] = "1"
    return None


def _insert(request, response, storage, *args, **kwargs):
    name = _query(request, "name")
    match = _query(request, "ifGenerationMatch")
    if name is not None and match is not None:
        if _generation(storage, request.params["bucket_name"], name) != match:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
    return _original_insert(request, response, storage, *args, **kwargs)


_original_download, _original_insert = objects.download, objects.insert


def _patch_routes() -> None:
    objects.download = _download  # objects.get(alt=media) looks the name up at call time
    for _, methods in server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler is _original_download:
                methods[method] = _download
            elif handler is _original_insert:
                methods[method] = _insert


def main() -> None:
    port, bucket = int(sys.argv[1]), sys.argv[2]
    _patch_routes()
    srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    srv.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
