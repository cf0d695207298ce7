"""brinicle compatibility: what a brinicle user, client or server caller expects, over the store.

- :mod:`engine`: ``VectorEngine``, brinicle's Python API (change one import);
- :mod:`build_ingest`: the CSV ingest endpoint's rules as a library call;
- :mod:`tasks`: durable upsertion tasks and their worker;
- :mod:`usage`: storage use per collection and per-API-key quotas.

The HTTP routes (:mod:`brinicle_etl.server`) and the client (:mod:`brinicle_etl.client`)
speak the wire formats; these modules hold the behaviour.
"""
