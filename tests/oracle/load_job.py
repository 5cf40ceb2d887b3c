"""What Azure's own Python SDK makes of command job YAML files: one JSON
line per file, {"file", "ok", and either "values" or "error"}. The job YAML
test runs it with the azure-ai-ml that `cargo xtask setup` installs in
.data/venv."""

import json
import sys
import warnings

warnings.filterwarnings("ignore")

from azure.ai.ml import load_job  # noqa: E402


def data(io):
    return {
        "path": getattr(io, "path", None),
        "mode": getattr(io, "mode", None),
        "type": getattr(io, "type", None),
    }


for path in sys.argv[1:]:
    try:
        job = load_job(path)
        env = job.environment
        inputs, literals = {}, {}
        for name, value in (job.inputs or {}).items():
            inner = getattr(value, "_data", value)
            if hasattr(inner, "path"):
                inputs[name] = data(inner)
            else:
                literals[name] = str(inner)
        dist = job.distribution
        values = {
            "type": job.type,
            "command": job.command,
            "image": getattr(env, "image", None),
            "compute": job.compute,
            "instance_count": getattr(job.resources, "instance_count", None),
            "distribution": None if dist is None else dist.type,
            "process_count_per_instance": getattr(dist, "process_count_per_instance", None),
            "environment_variables": {k: str(v) for k, v in (job.environment_variables or {}).items()},
            "inputs": inputs,
            "literals": literals,
            "outputs": {n: data(getattr(o, "_data", o)) for n, o in (job.outputs or {}).items()},
            "display_name": job.display_name,
            "timeout": getattr(job.limits, "timeout", None),
            "experiment_name": job.experiment_name,
            "description": job.description,
            "tags": {k: str(v) for k, v in (job.tags or {}).items()},
            "code": None if job.code is None else str(job.code),
        }
        print(json.dumps({"file": path, "ok": True, "values": values}, default=str))
    except Exception as e:  # noqa: BLE001 - every refusal is an answer
        print(json.dumps({"file": path, "ok": False, "error": f"{type(e).__name__}: {e}"[:300]}))
