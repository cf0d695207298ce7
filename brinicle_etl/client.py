"""``BrinicleClient``: a small Python client for the brinicle HTTP API (ours or brinicle's own server).

Methods follow brinicle's documented SDK; an error response raises a typed
:class:`HTTPError` (``BadRequestError``, ``UnauthorizedError``, ``QuotaHTTPError``,
``NotFoundHTTPError``, ``ConflictHTTPError``, ``PayloadTooLargeError``, ``BusyHTTPError``,
``DiskFullHTTPError``, ``ServerError``) carrying the status and the server's ``detail``. A
503 with ``Retry-After`` (the index is busy; nothing was done) is retried ``busy_retries``
times first. Needs the ``client`` extra (httpx).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

import numpy as np

from brinicle_etl.compat.form import UploadFields
from brinicle_etl.errors import (
    BrinicleError,
    BusyError,
    ConflictError,
    DiskFullError,
    InputError,
    MissingExtraError,
    NotFoundError,
    QuotaExceededError,
)

__all__ = [
    "BadRequestError",
    "BrinicleClient",
    "BusyHTTPError",
    "ConflictHTTPError",
    "DiskFullHTTPError",
    "HTTPError",
    "NotFoundHTTPError",
    "PayloadTooLargeError",
    "QuotaHTTPError",
    "ServerError",
    "UnauthorizedError",
    "encode_batch",
]

ID_WIDTH = 32


class HTTPError(BrinicleError):
    """An error response: ``status`` and the server's ``detail``."""

    def __init__(self, status: int, detail: Any):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class BadRequestError(HTTPError, InputError):
    """400 or 422: the request was malformed or its data invalid."""


class UnauthorizedError(HTTPError):
    """401: a missing or wrong API key."""


class NotFoundHTTPError(HTTPError, NotFoundError):
    """404: no such index (or task)."""


class ConflictHTTPError(HTTPError, ConflictError):
    """409: the index exists, or keys conflict."""


class PayloadTooLargeError(HTTPError, InputError):
    """413: the upload is over the server's limit."""


class QuotaHTTPError(HTTPError, QuotaExceededError):
    """403: the write would take the API key past its storage quota."""


class ServerError(HTTPError):
    """5xx."""


class BusyHTTPError(ServerError, BusyError):
    """503: too many writers on the index, or the wait timed out; nothing was done.
    ``retry_after`` is the server's advice in seconds."""


class DiskFullHTTPError(ServerError, DiskFullError):
    """507: the server's disk is full; nothing was written."""


_ERRORS: dict[int, type[HTTPError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: QuotaHTTPError,
    404: NotFoundHTTPError,
    409: ConflictHTTPError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    503: BusyHTTPError,
    507: DiskFullHTTPError,
}
_MAX_RETRY_WAIT = 30.0


def encode_batch(ids: Sequence[str], vectors: Any) -> bytes:
    """Rows of a 32-byte NUL-padded id and float32 values: the ``/ingest/batch`` body.

    Ids longer than 32 bytes are refused rather than cut (brinicle's own client cuts them,
    which silently merges ids sharing a prefix).
    """
    matrix = np.ascontiguousarray(vectors, dtype="<f4")
    if matrix.ndim != 2 or len(matrix) != len(ids):
        raise InputError(f"ingest_batch: {len(ids)} ids need a ({len(ids)}, dim) matrix, got {matrix.shape}")
    encoded = [i.encode("utf-8") for i in ids]
    for key, raw in zip(ids, encoded, strict=True):
        if not raw or len(raw) > ID_WIDTH or b"\0" in raw:
            raise InputError(f"ingest_batch: id {key!r} must be 1-{ID_WIDTH} bytes of UTF-8 without NUL")
    rows = np.empty(len(ids), dtype=np.dtype([("id", f"S{ID_WIDTH}"), ("v", "<f4", (matrix.shape[1],))]))
    rows["id"] = encoded
    rows["v"] = matrix
    return rows.tobytes()


class BrinicleClient:
    """``BrinicleClient("http://127.0.0.1:1984", api_key=None)``; also a context manager."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:1984",
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        busy_retries: int = 3,
    ):
        self.busy_retries = busy_retries
        try:
            import httpx
        except ImportError as exc:
            raise MissingExtraError("BrinicleClient needs httpx: pip install 'brinicle-etl[client]'") from exc
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BrinicleClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        # A busy 503 did nothing, so sending the same request again is safe (a file upload's
        # body cannot be replayed: it is not retried here).
        retries = 0 if "files" in kwargs else self.busy_retries
        for attempt in range(retries + 1):
            response = self._http.request(method, path, **kwargs)
            advice = response.headers.get("retry-after")
            if response.status_code != 503 or advice is None or attempt == retries:
                break
            time.sleep(min(float(advice), _MAX_RETRY_WAIT))
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            cls = _ERRORS.get(response.status_code, ServerError if response.status_code >= 500 else HTTPError)
            error = cls(response.status_code, detail)
            if isinstance(error, BusyError):
                error.retry_after = float(response.headers.get("retry-after") or 1)
            raise error
        return response.json()

    # ---- indexes ----

    def health_check(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/")
        return result

    def list_indexes(self) -> list[str]:
        return list(self._request("GET", "/indexes")["indexes"])

    def create_index(
        self,
        index_name: str,
        dim: int,
        *,
        delta_ratio: float = 0.10,
        params: Mapping[str, int] | None = None,
        metric: str | None = None,
        dtype: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"index_name": index_name, "dim": dim, "delta_ratio": delta_ratio}
        if params:
            body["params"] = dict(params)
        if metric:
            body["metric"] = metric
        if dtype:
            body["dtype"] = dtype
        result: dict[str, Any] = self._request("POST", "/indexes", json=body)
        return result

    def delete_index(self, index_name: str, *, destroy: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self._request(
            "DELETE", f"/indexes/{index_name}", params={"destroy": str(destroy).lower()}
        )
        return result

    def get_index_status(self, index_name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/indexes/{index_name}/status")
        return result

    def load_index(self, index_name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/indexes/load", json={"index_name": index_name})
        return result

    # ---- ingest ----

    def init(self, index_name: str, mode: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/init", json={"index_name": index_name, "mode": mode})
        return result

    def ingest(self, index_name: str, external_id: str, vector: Any) -> dict[str, Any]:
        values = np.asarray(vector, dtype=np.float32).tolist()
        body = {"index_name": index_name, "external_id": external_id, "vector": values}
        result: dict[str, Any] = self._request("POST", "/ingest", json=body)
        return result

    def ingest_batch(self, index_name: str, ids: Sequence[str], vectors: Any) -> int:
        """Stage many vectors in one binary request; returns how many the server took."""
        result = self._request(
            "POST",
            "/ingest/batch",
            params={"index_name": index_name},
            content=encode_batch(ids, vectors),
            headers={"Content-Type": "application/octet-stream"},
        )
        return int(result["count"])

    def finalize(
        self, index_name: str, *, optimize: bool = False, params: Mapping[str, int] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"index_name": index_name, "optimize": optimize}
        if params:
            body["params"] = dict(params)
        result: dict[str, Any] = self._request("POST", "/finalize", json=body)
        return result

    # ---- maintenance ----

    def delete_items(
        self, index_name: str, external_ids: Sequence[str], *, return_not_found: bool = False
    ) -> dict[str, Any]:
        body = {"index_name": index_name, "external_ids": list(external_ids), "return_not_found": return_not_found}
        result: dict[str, Any] = self._request("POST", "/delete", json=body)
        return result

    def rebuild(self, index_name: str, *, params: Mapping[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"index_name": index_name}
        if params:
            body["params"] = dict(params)
        result: dict[str, Any] = self._request("POST", "/rebuild", json=body)
        return result

    def optimize(self, index_name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/optimize", json={"index_name": index_name})
        return result

    # ---- CSV ingest and upsertion tasks ----

    def build_ingest_data(self, file: str | Any, **form: Unpack[UploadFields]) -> dict[str, Any]:
        """``POST /build_ingest_data/``: upload a CSV file (a path or an open binary file) with
        the endpoint's form fields (``dim`` required; ``seed`` 0 and ``depth`` 2 unless given)."""
        fields: dict[str, Any] = {"seed": 0, "depth": 2}
        for name, value in form.items():
            if isinstance(value, Mapping):
                fields[name] = json.dumps(dict(value))
            elif value is not None:
                fields[name] = value
        if isinstance(file, str | Path):
            with open(file, "rb") as fh:
                files = {"file": (Path(file).name, fh, "text/csv")}
                result: dict[str, Any] = self._request("POST", "/build_ingest_data/", data=fields, files=files)
                return result
        result = self._request("POST", "/build_ingest_data/", data=fields, files={"file": ("upload.csv", file)})
        return result

    def run_upsertion_task(
        self,
        embedding_model_id: str,
        items: Sequence[Mapping[str, Any]],
        *,
        task_id: str | None = None,
        index_name: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"embedding_model_id": embedding_model_id, "items": [dict(i) for i in items]}
        if task_id is not None:
            body["task_id"] = task_id
        if index_name is not None:
            body["index_name"] = index_name
        result: dict[str, Any] = self._request("POST", "/internal/upsertion-tasks/run", json=body)
        return result

    def get_upsertion_task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/internal/upsertion-tasks/info", params={"task_id": task_id})
        return result

    def list_upsertion_tasks(self, *, offset: int = 0, limit: int = 100, status: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status is not None:
            params["status"] = status
        result: dict[str, Any] = self._request("GET", "/internal/upsertion-tasks/list", params=params)
        return result

    def restart_upsertion_task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("PUT", "/internal/upsertion-tasks/restart", params={"task_id": task_id})
        return result

    def cancel_upsertion_task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("PUT", "/internal/upsertion-tasks/cancel", params={"task_id": task_id})
        return result

    def wait_for_task(self, task_id: str, *, timeout: float = 600.0, poll: float = 0.2) -> dict[str, Any]:
        """Poll a task until it is no longer pending or running."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.get_upsertion_task(task_id)
            if task["status"] not in ("pending", "running") or time.monotonic() > deadline:
                return task
            time.sleep(poll)

    # ---- search ----

    def search(self, index_name: str, query: Any, k: int = 10, *, efs: int = 64) -> list[str]:
        """External ids of the ``k`` nearest vectors (``/search.bin``)."""
        body = np.ascontiguousarray(query, dtype="<f4").tobytes()
        return list(
            self._request(
                "POST",
                "/search.bin",
                params={"index_name": index_name, "k": k, "efs": efs},
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            )
        )

    def search_batch(self, index_name: str, queries: Any, k: int = 10, *, efs: int = 64) -> list[list[str]]:
        body = np.ascontiguousarray(queries, dtype="<f4").tobytes()
        return list(
            self._request(
                "POST",
                "/search/batch.bin",
                params={"index_name": index_name, "k": k, "efs": efs},
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            )
        )

    def search_rows(
        self,
        index_name: str,
        query: str | Sequence[float],
        k: int = 10,
        *,
        filter: Mapping[str, Any] | None = None,
        ef: int | None = None,
    ) -> list[dict[str, Any]]:
        """``POST /search``: hits with ``key``, ``distance`` and the row's columns."""
        body: dict[str, Any] = {
            "index_name": index_name,
            "query": query if isinstance(query, str) else np.asarray(query, dtype=np.float32).tolist(),
            "k": k,
        }
        if filter is not None:
            body["filter"] = dict(filter)
        if ef is not None:
            body["ef"] = ef
        return list(self._request("POST", "/search", json=body)["results"])
