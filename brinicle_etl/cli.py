"""``brinicle-etl``: the command line over the library.

Each command parses its arguments, calls one library function and prints the result,
as a table or (``--json``) as JSON. Library errors become one ``error:`` line and
exit status 1; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, get_args

from brinicle_etl.errors import BrinicleError, ConfigError, InputError
from brinicle_etl.store import Store, default_store_path
from brinicle_etl.types import (
    ConflictPolicy,
    DuplicatePolicy,
    EmbedBackend,
    EmbedPrecision,
    HnswParams,
    IndexTiming,
    Metric,
    VectorDType,
    WriteMode,
)

__all__ = ["main"]


class ProgressLine:
    """Progress on stderr: a redrawn line on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO, *, enabled: bool = True):
        self.stream = stream
        self.enabled = enabled
        self.tty = stream.isatty()
        self._last = 0.0
        self._stage = ""

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        finished = total is not None and done >= total
        if stage == self._stage and not finished and now - self._last < (0.1 if self.tty else 5.0):
            return
        self._last, self._stage = now, stage
        label = {"read": "rows read", "embed": "rows embedded", "write": "rows written"}.get(stage, stage)
        if total:
            width = 30
            filled = int(width * done / total)
            text = f"{label:>14} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,}"
        else:
            text = f"{label:>14} {done:,}"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if finished else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self._stage:
            self.stream.write("\n")
            self.stream.flush()


def _table(rows: list[dict[str, Any]], columns: Sequence[str], out: TextIO, *, max_width: int = 48) -> None:
    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        text = text.replace("\n", " ")
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _emit(args: argparse.Namespace, data: Any, human: Callable[[TextIO], object]) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        human(sys.stdout)


def _store(args: argparse.Namespace) -> Store:
    return Store(args.store)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


# ---- commands ------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> None:
    from brinicle_etl.pipeline.options import IngestOptions
    from brinicle_etl.pipeline.run import run_ingest

    schema: str | None = args.schema
    if schema is not None and schema.startswith("@"):
        try:
            schema = Path(schema[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"--schema {args.schema}: cannot read {schema[1:]!r}: {reason}") from exc
    progress = ProgressLine(sys.stderr, enabled=not args.quiet)
    options = IngestOptions.of(
        mode=args.mode,
        on_conflict=args.on_conflict,
        on_duplicate=args.on_duplicate,
        sync=args.sync,
        index=args.index,
        schema=schema,
        template_name=args.template_name,
        primary_key=args.pk,
        semantic_fields=_split(args.text_fields),
        template=args.template,
        vector_col=args.vector_col,
        model=args.model,
        backend=args.embed_backend,
        precision=args.embed_precision,
        dim=args.dim,
        separator=args.separator,
        metric=args.metric,
        dtype=args.dtype,
        params=HnswParams(M=args.M, ef_construction=args.ef_construction, ef_search=args.ef_search),
        wait=args.wait,
        shards=args.shards,
        shard=args.shard,
    )
    try:
        result = run_ingest(args.path, args.collection, store=_store(args), options=options, progress=progress)
    finally:
        progress.close()

    def human(out: TextIO) -> None:
        verb = "Created" if result.mode == "Create" else "Updated" if result.published else "Unchanged"
        model = f", model {result.schema.model}" if result.vector_source == "generated" else ""
        vectors = "no vectors" if result.vector_source == "none" else f"{result.vector_source} vectors{model}"
        part = f" shard {result.shard}" if result.shard is not None else ""
        out.write(f"{verb} {result.collection}{part} from {args.path} ({vectors})\n")
        if result.inferred:
            out.write(f"inferred: {result.inferred}\n")
        out.write(
            f"rows: {result.rows_read:,} read, {result.rows_inserted:,} inserted, {result.rows_updated:,} updated, "
            f"{result.rows_skipped:,} skipped, {result.rows_unchanged:,} unchanged, {result.rows_deleted:,} deleted; "
            f"{result.rows_embedded:,} embedded{f' with {result.embedding}' if result.embedding else ''}\n"
        )
        if result.conflicts:
            shown = ", ".join(map(str, result.conflicts[:10]))
            more = f" and {len(result.conflicts) - 10} more" if len(result.conflicts) > 10 else ""
            out.write(f"conflicts ({result.on_conflict}): {shown}{more}\n")
        t = result.timings
        stages = ", ".join(f"{k} {t[k]:.1f}" for k in ("read", "plan", "embed", "write") if k in t)
        out.write(f"took {t.get('total', 0):.1f} s ({stages}); generation {result.generation}\n")
        for r in result.shards:
            out.write(
                f"  shard {r.shard}: {r.rows_read:,} read, {r.rows_inserted:,} inserted, {r.rows_updated:,} updated, "
                f"{r.rows_deleted:,} deleted, {r.rows_embedded:,} embedded; generation {r.generation}\n"
            )

    _emit(args, result.to_dict(), human)


def _parse_query(text: str) -> Any:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(f"the query looks like a JSON vector but is not valid JSON: {exc}") from exc
        if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
            raise InputError("a vector query must be a JSON array of numbers")
        return value
    return text


def cmd_search(args: argparse.Namespace) -> None:
    from brinicle_etl.search import search

    hits = search(args.collection, _parse_query(args.query), args.k, store=_store(args), ef=args.ef)

    def human(out: TextIO) -> None:
        if not hits:
            out.write("no results\n")
            return
        # The key is the primary key's value (already a column) or a content hash: not worth a column.
        columns = ["distance", *hits[0].row.keys()]
        _table([{"distance": f"{h.distance:.4f}", **h.row} for h in hits], columns, out)

    _emit(args, [h.to_dict() for h in hits], human)


def _status_dict(status: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(status)


def _size(n: int) -> str:
    value, unit = float(n), "bytes"
    for bigger in ("KB", "MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


def cmd_status(args: argparse.Namespace) -> None:
    status = _store(args).open(args.collection).status()
    data = _status_dict(status)

    def human(out: TextIO) -> None:
        s = status
        params = "  ".join(f"{k}={v}" for k, v in s.params.to_dict().items())
        session = f"{s.session_mode}, {s.staged_count:,} vectors staged" if s.session_mode else "none"
        lines = [
            (
                "rows",
                f"{s.live_count:,} live ({s.main_count:,} in main, {s.delta_count:,} in delta"
                + (f", {s.pending_count:,} pending" if s.pending_count else "")
                + f"; {s.deleted_count:,} deleted since the last build)",
            ),
            ("vectors", f"{s.dim}-d {s.dtype}, {s.metric}"),
            ("index", params),
            ("rebuild", f"{'needed' if s.needs_rebuild else 'not needed'} (delta_ratio {s.delta_ratio:g})"),
            ("generation", str(s.generation)),
            ("on disk", _size(s.bytes_on_disk)),
            ("session", session),
        ]
        if s.shards:
            lines[4] = ("generation", " ".join(str(p.generation) for p in s.shards) + " (by shard)")
            rows = ", ".join(f"{p.live_count:,}" for p in s.shards)
            lines.insert(1, ("shards", f"{len(s.shards)}, split by key; live rows by shard: {rows}"))
        out.write(f"{s.name}\n")
        for label, value in lines:
            out.write(f"  {label:<11}{value}\n")

    _emit(args, data, human)


def cmd_list(args: argparse.Namespace) -> None:
    store = _store(args)
    rows = []
    for name in store.names():
        s = store.open(name).status()
        rows.append({"collection": name, "rows": s.live_count, "dim": s.dim, "generation": s.generation})

    def human(out: TextIO) -> None:
        if rows:
            _table(rows, ["collection", "rows", "dim", "generation"], out)
        else:
            out.write(f"no collections in {store.root}\n")

    _emit(args, rows, human)


def cmd_delete(args: argparse.Namespace) -> None:
    result = _store(args).open(args.collection).delete(args.keys, return_not_found=True, wait=args.wait)
    data = {"deleted_count": result.deleted_count, "not_found": result.not_found, "generation": result.generation}

    def human(out: TextIO) -> None:
        out.write(f"deleted {result.deleted_count}")
        out.write(f"; not found: {', '.join(result.not_found)}\n" if result.not_found else "\n")

    _emit(args, data, human)


def cmd_drop(args: argparse.Namespace) -> None:
    store = _store(args)
    name = store.canonical(args.collection)
    store.drop(name, wait=args.wait)
    _emit(args, {"dropped": name}, lambda out: out.write(f"dropped {name} and its files\n"))


def cmd_rebuild(args: argparse.Namespace) -> None:
    given = {"M": args.M, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    params = {k: v for k, v in given.items() if v is not None} or None
    col = _store(args).open(args.collection)
    generation = col.rebuild(params, wait=args.wait)
    data = {"generation": generation, "params": col.config.params.to_dict()}
    _emit(args, data, lambda out: out.write(f"rebuilt {col.name}: generation {generation}\n"))


def cmd_vacuum(args: argparse.Namespace) -> None:
    col = _store(args).open(args.collection)
    result = col.vacuum(retention_seconds=args.retention_hours * 3600, wait=args.wait)
    data = {"removed": result.removed, "bytes_freed": result.bytes_freed, "kept_generations": result.kept_generations}
    kept = ", ".join(map(str, result.kept_generations))
    message = (
        f"{col.name}: removed {len(result.removed)} objects ({result.bytes_freed:,} bytes); kept generations {kept}\n"
    )
    _emit(args, data, lambda out: out.write(message))


def cmd_optimize(args: argparse.Namespace) -> None:
    col = _store(args).open(args.collection)
    merged = col.optimize(wait=args.wait)
    data = {"rebuilt": merged, "generation": col.generation}
    message = "merged the delta into a fresh main" if merged else "nothing to do: needs_rebuild is false"
    _emit(args, data, lambda out: out.write(f"{col.name}: {message}\n"))


def _print_result(table: Any, args: argparse.Namespace) -> None:
    if table is None:
        return
    rows = table.to_pylist()
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif rows:
        _table(rows, table.column_names, sys.stdout)
        sys.stdout.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")
    else:
        sys.stdout.write("(no rows)\n")


def cmd_sql(args: argparse.Namespace) -> None:
    from brinicle_etl.sql import connect, run

    con = connect(_store(args))
    try:
        if args.query:
            _print_result(run(con, args.query), args)
            return
        _repl(con, args)
    finally:
        con.close()


def _repl(con: Any, args: argparse.Namespace) -> None:
    """Statements end with ';' (at the end of input, the last one needs none). At a prompt an
    error is printed and the prompt continues; from a pipe or file the first error stops
    the run with exit status 1. .quit or EOF leaves."""
    from brinicle_etl.sql import run

    interactive = sys.stdin.isatty()
    if interactive:
        print(f"brinicle-etl SQL on {_store(args).root} (end statements with ';', .quit to leave)")
    buffer: list[str] = []

    def execute() -> None:
        statement = "\n".join(buffer).strip()
        buffer.clear()
        if not statement:
            return
        try:
            _print_result(run(con, statement), args)
        except BrinicleError as exc:
            if not interactive:
                raise
            print(f"error: {exc}", file=sys.stderr)

    while True:
        try:
            line = input("brinicle> " if not buffer else "      ...> ") if interactive else sys.stdin.readline()
        except EOFError:
            break
        if not interactive and line == "":
            break
        if not buffer and line.strip() in (".quit", ".exit", "\\q"):
            return
        buffer.append(line.rstrip("\n"))
        if line.rstrip().endswith(";"):
            execute()
    execute()  # a last statement without ';'


def cmd_serve(args: argparse.Namespace) -> None:
    from brinicle_etl.server import ServerSettings, serve

    quotas = {}
    for entry in args.quota or ():
        key, _, megabytes = entry.rpartition("=")
        if not key:
            raise ConfigError(f"--quota takes KEY=MB; got {entry!r}")
        quotas[key] = int(float(megabytes) * 2**20)
    settings = ServerSettings.from_env(
        store=_store(args).location,
        api_keys=tuple(args.api_key or ()),
        quotas=quotas or None,
        max_upload_bytes=int(args.max_upload_mb * 2**20) if args.max_upload_mb is not None else None,
        writer_timeout=args.writer_timeout,
        max_waiting_writers=args.max_waiting_writers,
        upload_idle_seconds=args.upload_idle_seconds,
    )
    print(f"serving {settings.store} on http://{args.host}:{args.port} (OpenAPI page: /docs)", file=sys.stderr)
    serve(settings, host=args.host, port=args.port, workers=args.workers, access_log=args.access_log)


# ---- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        default=None,
        metavar="DIR",
        help=f"store directory (default: $BRINICLE_STORE, else ./{default_store_path()})",
    )
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    writer = argparse.ArgumentParser(add_help=False)
    writer.add_argument("--wait", action="store_true", help="wait for another writer instead of failing")

    parser = argparse.ArgumentParser(
        prog="brinicle-etl", description="Keep a vector index in sync with CSV / Parquet tables."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", parents=[common, writer], help="ingest a CSV/Parquet file, glob or directory")
    p.add_argument("path", help="a file, a glob such as 'data/*.csv', or a directory")
    p.add_argument("--collection", "-c", required=True, help="collection as db/namespace (or db)")
    p.add_argument("--mode", choices=get_args(WriteMode), default="upsert")
    p.add_argument("--on-conflict", choices=get_args(ConflictPolicy), default="error")
    p.add_argument("--on-duplicate", choices=get_args(DuplicatePolicy), default="error")
    p.add_argument("--sync", action="store_true", help="delete rows whose keys are no longer in the source")
    p.add_argument(
        "--index",
        choices=get_args(IndexTiming),
        default="now",
        help="link new vectors into the index before the result (now), or after it, before the command exits",
    )
    p.add_argument("--pk", help="primary key column (inferred if omitted)")
    p.add_argument("--text-fields", help="comma-separated columns to embed (inferred if omitted)")
    p.add_argument("--template", help="text template over columns, e.g. '{title}: {description}'")
    p.add_argument("--vector-col", help="column of precomputed vectors (JSON arrays in CSV)")
    p.add_argument("--model", help="embedding model id (default all-MiniLM-L6-v2)")
    p.add_argument(
        "--embed-backend",
        choices=get_args(EmbedBackend),
        help="what runs the model (default auto: the fastest that passes)",
    )
    p.add_argument("--embed-precision", choices=get_args(EmbedPrecision), help="its arithmetic (default auto)")
    p.add_argument("--schema", help="template schema as JSON, or @file.json")
    p.add_argument("--template-name", help="use, or save under this name, the schema template")
    p.add_argument("--dim", type=int, help="vector dimension (checked against the vectors)")
    p.add_argument(
        "--separator", metavar="CHAR", help="CSV delimiter (default: tab for .tsv, else the header's , TAB ; or |)"
    )
    p.add_argument("--metric", choices=get_args(Metric), default="cosine")
    p.add_argument(
        "--dtype",
        choices=get_args(VectorDType),
        help="vector dtype of a new collection (default: i8 for cosine, else bf16)",
    )
    p.add_argument("--M", type=int, default=16, help="HNSW connectivity")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--shards", type=int, metavar="N", help="split a new collection by key into N shards, written apart")
    p.add_argument("--shard", type=int, metavar="I", help="write only shard I of a sharded collection (its keys' rows)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", parents=[common], help="search a collection by text or by vector")
    p.add_argument("collection")
    p.add_argument("query", help="text, or a JSON array for a vector")
    p.add_argument("--k", "-k", type=int, default=10)
    p.add_argument("--ef", type=int, help="search beam width (default: the collection's ef_search)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("status", parents=[common], help="a collection's settings and counts")
    p.add_argument("collection")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("list", parents=[common], help="the store's collections")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("delete", parents=[common, writer], help="delete rows by key")
    p.add_argument("collection")
    p.add_argument("keys", nargs="+")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("drop", parents=[common, writer], help="delete a collection and its files")
    p.add_argument("collection")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("rebuild", parents=[common, writer], help="compact into a fresh index")
    p.add_argument("collection")
    p.add_argument("--M", type=int)
    p.add_argument("--ef-construction", type=int)
    p.add_argument("--ef-search", type=int)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser("sql", parents=[common], help="run SQL with the brinicle_* functions (no query: a prompt)")
    p.add_argument("query", nargs="?", help="e.g. \"SELECT * FROM brinicle_search('shop/products', 'boots')\"")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("serve", parents=[common], help="serve the store over HTTP (brinicle's API)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=1984)
    p.add_argument(
        "--api-key", action="append", help="require this X-API-Key (repeat for several; or $BRINICLE_API_KEYS)"
    )
    p.add_argument("--quota", action="append", metavar="KEY=MB", help="storage quota of an API key (repeatable)")
    p.add_argument("--max-upload-mb", type=float, help="largest CSV upload accepted (default 512)")
    p.add_argument("--workers", type=int, default=1, help="server processes (collections are safe to share)")
    p.add_argument(
        "--access-log", action="store_true", help="log every request (off by default: it costs ~10%% of search QPS)"
    )
    p.add_argument(
        "--writer-timeout", type=float, metavar="S", help="longest wait for a write's turn on an index, then 503 (60)"
    )
    p.add_argument("--max-waiting-writers", type=int, metavar="N", help="writes waiting per index before 503 (256)")
    p.add_argument(
        "--upload-idle-seconds", type=float, metavar="S", help="drop an upload that sends nothing this long (30)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("optimize", parents=[common, writer], help="rebuild only if needs_rebuild")
    p.add_argument("collection")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("vacuum", parents=[common, writer], help="remove files no reader can still need")
    p.add_argument("collection")
    p.add_argument(
        "--retention-hours",
        type=float,
        default=1.0,
        metavar="H",
        help="keep generations superseded less than this long ago (default 1; object storage)",
    )
    p.set_defaults(func=cmd_vacuum)
    return parser


def _version() -> str:
    from brinicle_etl import __version__

    return f"brinicle-etl {__version__}"


_ARGUMENT = re.compile(r"\b([a-z_]+)=(?:'([^']*)'|(True)\b)?")


def in_cli_words(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message with its Python arguments as this CLI's flags: ``pass wait=True``
    -> ``pass --wait``, ``on_conflict='update'`` -> ``--on-conflict update``."""
    options: dict[str, argparse.Action] = {}
    for group in parser._subparsers._group_actions if parser._subparsers else ():
        for sub in getattr(group, "choices", {}).values():
            options.update({a.dest: a for a in sub._actions if a.option_strings})

    def flag(match: re.Match[str]) -> str:
        action = options.get(match.group(1))
        if action is None:
            return match.group(0)
        name = max(action.option_strings, key=len)
        if match.group(3):  # =True: a switch
            return name
        return f"{name} {match.group(2) if match.group(2) is not None else action.metavar or action.dest.upper()}"

    return _ARGUMENT.sub(flag, message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The library logs what it infers; commands print it with their result instead.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`... --json | head`): stop quietly, as a C tool killed by SIGPIPE does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BrinicleError as exc:
        print(f"error: {in_cli_words(str(exc), parser)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("BRINICLE_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set BRINICLE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
