"""The Hugging Face hub, when a model spec is a hub id: answer within seconds whether it can be used.

transformers retries an unreachable hub for about a minute before it fails; a cached snapshot works
without it.
"""

from __future__ import annotations

import os
from pathlib import Path

from circuitdyn.models.files import ModelSpecError

HUB_PROBE_SECONDS = 3.0


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the hub endpoint answers at all within `timeout` (any HTTP status counts; proxies apply)."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def hub_target(spec: str, hub_id: str, valid_specs: str) -> Path | str:
    """The hub id, or its cached snapshot folder when the hub cannot be used; refused within seconds when
    neither works (transformers would retry for about a minute first)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hub_id, "config.json")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if not offline and hub_reachable():
        return hub_id
    if isinstance(cached, str):
        return Path(cached).parent
    why = "HF_HUB_OFFLINE=1 is set" if offline else f"the hub ({os.environ.get('HF_ENDPOINT', 'huggingface.co')}) " \
        f"did not answer within {HUB_PROBE_SECONDS:g} s"
    raise ModelSpecError(f"{spec!r} looks like a hub id, but {why} and it is not in the local hub cache. Download it "
                         f"where there is network access (or save it to a folder), or use one of: {valid_specs}")
