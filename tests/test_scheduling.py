"""The schedulers of docs/scheduling.md: the Kubernetes manifests (docs/k8s/) against the fields and
types of the resources they declare, and the page's crontab and ``ray job submit`` lines (valid
schedules, valid ``biomine`` command lines). No cron daemon, Ray dashboard or Kubernetes runs here;
the lease that keeps two scheduled runs apart is tested for real in tests/test_run_state.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "scheduling.md"


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DOCS / "k8s" / name).read_text()) if d is not None]


# --- a small schema: (path, type) pairs a resource must have -----------------------------------------
def get(obj, path: str):
    for part in path.split("."):
        if isinstance(obj, list):
            obj = obj[int(part)]
        else:
            assert isinstance(obj, dict) and part in obj, f"missing {path!r} (at {part!r})"
            obj = obj[part]
    return obj


CONTAINER = {"name": str, "image": str}
SCHEMAS: dict[tuple[str, str], dict[str, type | tuple[type, ...]]] = {
    ("batch/v1", "CronJob"): {
        "metadata.name": str,
        "spec.schedule": str,
        "spec.concurrencyPolicy": str,
        "spec.jobTemplate.spec.template.spec.restartPolicy": str,
        "spec.jobTemplate.spec.template.spec.serviceAccountName": str,
        "spec.jobTemplate.spec.template.spec.containers": list,
        "spec.jobTemplate.spec.template.spec.volumes": list,
    },
    ("ray.io/v1", "RayJob"): {
        "metadata.generateName": str,
        "spec.entrypoint": str,
        "spec.shutdownAfterJobFinishes": bool,
        "spec.ttlSecondsAfterFinished": int,
        "spec.backoffLimit": int,
        "spec.rayClusterSpec.headGroupSpec.rayStartParams": dict,
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers": list,
        "spec.rayClusterSpec.workerGroupSpecs": list,
    },
    ("v1", "ServiceAccount"): {"metadata.name": str},
    ("rbac.authorization.k8s.io/v1", "Role"): {"metadata.name": str, "rules": list},
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): {"metadata.name": str, "subjects": list, "roleRef.name": str},
}


def check(doc: dict) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMAS, f"unexpected resource {key}"
    for path, typ in SCHEMAS[key].items():
        value = get(doc, path)
        assert isinstance(value, typ) and not (typ is int and isinstance(value, bool)), (key, path, value)


CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(expr: str) -> bool:
    """A five-field crontab schedule (numbers, ``*``, ranges, lists, steps)."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, CRON_RANGES):
        for item in field.split(","):
            base, _, step = item.partition("/")
            if step and not step.isdigit():
                return False
            if base == "*":
                continue
            bounds = base.split("-")
            if not all(b.isdigit() and lo <= int(b) <= hi for b in bounds) or len(bounds) > 2:
                return False
    return True


def test_cron_schedule_check_itself():
    assert valid_cron("15 6 * * *") and valid_cron("*/10 0-5,23 1 1-12 0")
    assert not valid_cron("15 6 * *") and not valid_cron("60 6 * * *") and not valid_cron("15 6 * * mon-x")


def parses_as_biomine(argv: list[str]) -> None:
    assert argv[0] == "biomine", argv
    args = build_parser().parse_args(argv[1:])  # SystemExit (a failed test) on an unknown flag
    assert args.command in ("run", "status")


def test_the_rayjob_runs_a_valid_biomine_command_on_a_job_file_from_its_configmap():
    (job,) = manifests("rayjob.yaml")
    check(job)
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    parses_as_biomine(argv)
    assert argv[1] == "run" and "--address" in argv and argv[argv.index("--address") + 1] == "auto"
    assert spec["shutdownAfterJobFinishes"] is True
    head = get(spec, "rayClusterSpec.headGroupSpec.template.spec")
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    job_file = Path(argv[2])
    (mounted,) = [n for n, p in mounts.items() if job_file.parent == Path(p)]
    assert "configMap" in volumes[mounted], "the job file must come from a ConfigMap"
    # Every pod gets the storage credentials and a model cache; workers ask for the GPUs.
    workers = spec["rayClusterSpec"]["workerGroupSpecs"]
    for pod in [head] + [w["template"]["spec"] for w in workers]:
        container = pod["containers"][0]
        for k, t in CONTAINER.items():
            assert isinstance(container.get(k), t)
        assert any("secretRef" in e for e in container["envFrom"])
        assert any(e["name"] == "BIOMINE_MODEL_CACHE" for e in container["env"])
    for w in workers:
        assert isinstance(w["groupName"], str) and w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
        assert "nvidia.com/gpu" in w["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_the_cronjob_creates_that_rayjob_without_overlap_and_may_do_nothing_else():
    docs = manifests("cronjob.yaml")
    for doc in docs:
        check(doc)
    kinds = {d["kind"]: d for d in docs}
    cron = kinds["CronJob"]
    assert valid_cron(cron["spec"]["schedule"]) and cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = get(cron, "spec.jobTemplate.spec.template.spec")
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:3] == ["kubectl", "create", "-f"]  # create: the RayJob's generateName names each run
    manifest = Path(command[3])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == manifest.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == "biomine-rayjob"
    assert manifest.name == "rayjob.yaml" and (DOCS / "k8s" / manifest.name).exists()
    # The service account may create RayJobs, and nothing else.
    account = pod["serviceAccountName"]
    binding = kinds["RoleBinding"]
    assert kinds["ServiceAccount"]["metadata"]["name"] == account
    assert {"kind": "ServiceAccount", "name": account} in [dict(s) for s in binding["subjects"]]
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    (rule,) = kinds["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"] and "create" in rule["verbs"]
    assert not set(rule["verbs"]) & {"delete", "update", "patch", "*"}
    # The page tells how to make the ConfigMap the CronJob mounts, under the key it reads.
    assert "kubectl create configmap biomine-rayjob --from-file=rayjob.yaml=docs/k8s/rayjob.yaml" in PAGE.read_text()


def test_the_crontab_and_ray_job_submit_lines_of_the_page_are_valid():
    text = PAGE.read_text()
    blocks = re.findall(r"^```crontab\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    cron_lines = [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]
    assert len(cron_lines) == 2
    for line in cron_lines:
        fields = line.split(None, 5)
        assert valid_cron(" ".join(fields[:5])), line
        command = fields[5]
        runs = [part for part in re.split(r"&&|\|\||\|", command) if "biomine" in part and "bin/biomine" in part]
        assert runs, line
        for part in runs:
            argv = shlex.split(part.split(">")[0])
            parses_as_biomine(["biomine"] + argv[1:])
    (submit,) = [line for line in text.splitlines() if line.startswith("ray job submit")]
    argv = shlex.split(submit)
    parses_as_biomine(argv[argv.index("--") + 1 :])


@pytest.mark.parametrize("name", ["rayjob.yaml", "cronjob.yaml"])
def test_manifests_are_linked_from_the_page(name):
    assert f"docs/k8s/{name}" in PAGE.read_text()
