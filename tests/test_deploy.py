"""Deployment definitions, validated against the platforms' own published models, with no cloud call.

- Databricks: every job in the bundle parses with `databricks.bundles.jobs.Job` (strict: an unknown or misspelled
  field fails), every `${var.*}` is declared, the tasks chain the stages in order.
- EMR: the cluster and its steps validate against botocore's EMR service model (RunJobFlow, AddJobFlowSteps).
- The settings files they name load, and point at cloud storage, not local paths.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator

from behavior_spark.cli import STAGE_NAMES
from behavior_spark.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "deploy" / "databricks"
EMR = ROOT / "deploy" / "emr"
PIPELINE = [s for s in STAGE_NAMES if s not in ("generate", "inspect", "run")]  # what a daily job chains


def bundle_documents() -> list[dict]:
    main = yaml.safe_load((BUNDLE / "databricks.yml").read_text())
    included = [yaml.safe_load(p.read_text()) for pattern in main["include"] for p in sorted(BUNDLE.glob(pattern))]
    return [main, *included]


def bundle_jobs() -> dict[str, dict]:
    return {name: job for doc in bundle_documents() for name, job in doc.get("resources", {}).get("jobs", {}).items()}


def test_the_bundle_jobs_parse_with_databricks_own_job_model():
    from databricks.bundles.jobs import Job

    jobs = bundle_jobs()
    assert jobs
    for job in jobs.values():
        Job.from_dict(json.loads(json.dumps(job)))  # raises on an unknown field or a wrong type
    misspelled = {"name": "x", "tasks": [{"task_key": "a", "python_wheel_task": {"entry_pont": "e"}}]}
    with pytest.raises(ValueError, match="entry_pont"):  # the model does check
        Job.from_dict(misspelled)


def test_the_bundle_declares_every_variable_it_uses_and_both_targets():
    main, *_ = bundle_documents()
    text = "\n".join(p.read_text() for p in [BUNDLE / "databricks.yml", *BUNDLE.glob("resources/*.yml")])
    used = set(re.findall(r"\$\{var\.([a-z_]+)\}", text))
    assert used <= set(main["variables"]), used - set(main["variables"])
    assert {"dev", "prod"} <= set(main["targets"])
    assert main["artifacts"]["behavior_spark_wheel"]["type"] == "whl"
    assert main["artifacts"]["behavior_spark_jvm"]["type"] == "jar"
    assert (BUNDLE / "init" / "horovod.sh").is_file()


def test_the_bundle_s_jar_build_makes_the_keyed_hash_the_ingest_task_installs(tmp_path):
    """The artifact's own build command, run here against this venv's pyspark, makes the JAR the ingest task lists."""
    main, *_ = bundle_documents()
    artifact = main["artifacts"]["behavior_spark_jvm"]
    command = artifact["build"].replace("python3", sys.executable).replace("dist/", f"{tmp_path}/")
    subprocess.run(command.split(), cwd=(BUNDLE / artifact["path"]).resolve(), check=True)
    listing = subprocess.run(["jar", "tf", str(tmp_path / "behavior-spark-jvm.jar")], capture_output=True, text=True)
    assert "behaviorspark/KeyedHash.class" in listing.stdout.split()
    (job,) = bundle_jobs().values()
    ingest = next(task for task in job["tasks"] if task["task_key"] == "ingest")
    assert {"jar": "../../../dist/behavior-spark-jvm.jar"} in ingest["libraries"]
    assert artifact["files"] == [{"source": "../../dist/behavior-spark-jvm.jar"}]


def test_the_job_chains_the_stages_in_order_training_on_the_gpu_cluster():
    (job,) = bundle_jobs().values()
    tasks = {t["task_key"]: t for t in job["tasks"]}
    assert list(tasks) == PIPELINE
    for before, after in zip(PIPELINE, PIPELINE[1:], strict=False):
        assert tasks[after]["depends_on"] == [{"task_key": before}]
    for key, task in tasks.items():
        assert task["python_wheel_task"]["parameters"][0] == key
        assert task["python_wheel_task"]["entry_point"] == "behavior-spark"
    gpu = next(c for c in job["job_clusters"] if c["job_cluster_key"] == "gpu")["new_cluster"]
    assert gpu["spark_env_vars"]["HOROVOD_GPU_OPERATIONS"] == "NCCL"
    assert tasks["train"]["job_cluster_key"] == "gpu"


def test_production_runs_as_a_service_principal_and_every_task_retries_within_a_time_limit():
    main, *_ = bundle_documents()
    assert set(main["targets"]["prod"]["run_as"]) == {"service_principal_name"}
    assert all(main["variables"][name]["default"].startswith("/Volumes/") for name in ("lake_root", "model_dir"))
    (job,) = bundle_jobs().values()
    assert 0 < max(task["timeout_seconds"] for task in job["tasks"]) <= job["timeout_seconds"]
    for task in job["tasks"]:
        assert task["max_retries"] >= 1 and task["retry_on_timeout"], task["task_key"]
    assert "--resume" in next(t for t in job["tasks"] if t["task_key"] == "train")["python_wheel_task"]["parameters"]


SECRETS_BY_STAGE = {
    "ingest": {"BEHAVIOR_SPARK_PSEUDONYM_KEY"},
    "export": {"BEHAVIOR_SPARK_WAREHOUSE_USER", "BEHAVIOR_SPARK_WAREHOUSE_PASSWORD"},
}


def test_each_databricks_stage_gets_only_the_secrets_it_uses():
    (job,) = bundle_jobs().values()
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    for task in job["tasks"]:
        cluster = clusters[task["job_cluster_key"]]
        env = cluster.get("spark_env_vars", {})
        secrets = {name for name, value in env.items() if "{{secrets/" in str(value)}
        assert secrets == SECRETS_BY_STAGE.get(task["task_key"], set()), task["task_key"]
        assert "pseudonym" in cluster["spark_conf"]["spark.redaction.regex"]


def test_each_emr_stage_gets_only_the_secrets_it_uses(tmp_path):
    fake_aws = tmp_path / "aws"
    fake_aws.write_text("#!/bin/sh\necho secret-of-$5\n")  # `aws secretsmanager get-secret-value --secret-id X`
    fake_aws.chmod(0o755)
    spark_submit = tmp_path / "opt" / ".venv" / "bin" / "spark-submit"
    spark_submit.parent.mkdir(parents=True)
    spark_submit.write_text("#!/bin/sh\nenv | grep ^BEHAVIOR_SPARK_ | cut -d= -f1 | sort\n")
    spark_submit.chmod(0o755)
    script = (EMR / "run-stage").read_text().replace("HOME_DIR=/opt/behavior-spark", f"HOME_DIR={tmp_path / 'opt'}")
    (tmp_path / "run-stage").write_text(script)
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("BEHAVIOR_SPARK_")}
    for stage in PIPELINE:
        result = subprocess.run(
            ["bash", str(tmp_path / "run-stage"), stage],
            env={**clean_env, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            check=True,
        )
        assert set(result.stdout.split()) == SECRETS_BY_STAGE.get(stage, set()), stage


def emr_validate(operation: str, params: dict) -> str:
    model = botocore.session.get_session().get_service_model("emr").operation_model(operation)
    report = ParamValidator().validate(params, model.input_shape)
    return report.generate_report() if report.has_errors() else ""


def test_the_emr_cluster_and_steps_validate_against_botocore():
    cluster = json.loads((EMR / "cluster.json").read_text())
    steps = json.loads((EMR / "steps.json").read_text())
    assert emr_validate("RunJobFlow", cluster) == ""
    assert emr_validate("RunJobFlow", {**cluster, "Steps": steps}) == ""
    assert emr_validate("AddJobFlowSteps", {"JobFlowId": "j-EXAMPLE", "Steps": steps}) == ""
    assert [s["HadoopJarStep"]["Args"][1] for s in steps] == PIPELINE
    assert emr_validate("RunJobFlow", {**cluster, "Instances": {"InstanceCount": "four"}}) != ""  # it does check


def test_the_emr_scripts_name_files_that_exist():
    wrapper = (EMR / "run-stage").read_text()
    assert '"$HOME_DIR/jobs/$STAGE.py"' in wrapper and "conf/emr.yaml" in wrapper
    assert all((ROOT / "jobs" / f"{stage}.py").is_file() for stage in PIPELINE)
    assert "scripts/setup.sh --node" in (EMR / "bootstrap.sh").read_text()


def test_cloud_locations_map_to_what_each_library_can_open():
    from behavior_spark import artifacts, feed

    assert feed.petastorm_cache_url("dbfs:/lake/_petastorm_cache") == "file:///dbfs/lake/_petastorm_cache"
    assert feed.petastorm_cache_url("s3://bucket/lake/_cache") == "s3://bucket/lake/_cache"
    assert feed.petastorm_cache_url("/tmp/lake/_cache") == "file:///tmp/lake/_cache"
    assert artifacts.join("dbfs:/models/", "model.h5") == "dbfs:/models/model.h5"


@pytest.mark.parametrize("name, scheme", [("databricks.yaml", "/Volumes/"), ("emr.yaml", "s3://")])
def test_cluster_settings_load_and_use_cloud_storage(name, scheme):
    settings = load_settings(ROOT / "conf" / name)
    for location in (settings.lake.root, settings.ingest.input, settings.train.model_dir):
        assert location.startswith(scheme)
