"""What Azure's own Python SDK makes of compute YAML files: one JSON line per
file, {"file", "ok", and either "values" (what it would send to the service,
defaults included) or "error"}. The compute YAML test runs it with the
azure-ai-ml that `cargo xtask setup` installs in .data/venv."""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

from azure.ai.ml import load_compute  # noqa: E402


def iso_seconds(duration):
    """PT2M, PT1H30M, PT120S as seconds."""
    total, number = 0, ""
    for ch in duration[2:]:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"H": 3600, "M": 60, "S": 1}[ch]
            number = ""
    return total


for path in sys.argv[1:]:
    try:
        compute = load_compute(path)
        rest = compute._to_rest_object().as_dict()["properties"]
        props = rest.get("properties", {})
        scale = props.get("scaleSettings", {})
        identity = compute.identity
        values = {
            "name": compute.name,
            "type": compute.type,
            "size": props.get("vmSize"),
            "tier": {"lowpriority": "low_priority"}.get(
                (props.get("vmPriority") or "Dedicated").lower(), "dedicated"
            ),
            "min_instances": scale.get("minNodeCount"),
            "max_instances": scale.get("maxNodeCount"),
            # Left out (the SDK leaves out 0): the service's default, PT2M.
            "idle_seconds": iso_seconds(scale.get("nodeIdleTimeBeforeScaleDown") or "PT2M"),
            "enable_node_public_ip": props.get("enableNodePublicIp"),
            "location": compute.location,
            "description": compute.description,
            "tags": compute.tags or {},
            "identity": None if identity is None else identity.type,
            "user_assigned_identities": sorted(
                u.resource_id for u in (getattr(identity, "user_assigned_identities", None) or [])
            ),
        }
        print(json.dumps({"file": path, "ok": True, "values": values}))
    except Exception as e:  # noqa: BLE001 - every refusal is an answer
        print(json.dumps({"file": path, "ok": False, "error": f"{type(e).__name__}: {e}"[:300]}))
