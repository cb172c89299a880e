"""Trace loaders: each format from small files built here, the public traces shipped in tests/fixtures, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sim_support import public_trace

from scheduler.model import JobKind, PriorityClass
from simulations.loaders import LoadOptions, TraceError, load_nodes, open_trace
from simulations.loaders.base import gang_shape
from simulations.schema import TraceJob, write_native


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_native_round_trip_and_counted_skips(tmp_path: Path) -> None:
    jobs = [
        TraceJob(id="a", submit_time=0, duration_s=60, devices_per_worker=0.5, models=("T4",), tenant="acme"),
        TraceJob(id="b", submit_time=5, duration_s=600, workers=2, devices_per_worker=8, duration_model="A100"),
    ]
    path = tmp_path / "t.csv"
    write_native(jobs, path)
    with path.open("a", encoding="utf-8") as handle:
        handle.write("c,7,-3\nd,8,10,1,1.5\ne,9,10,1,1,0,0,NoSuchGPU\n")
    source = open_trace(path, "native")
    loaded = list(source)
    assert [j.id for j in loaded] == ["a", "b"]
    assert loaded[0].models == ("T4",) and loaded[0].tenant == "acme" and loaded[1].workers == 2
    assert source.report.skipped == {
        "negative duration_s": 1,
        "devices_per_worker must be a whole count or a fraction below 1": 1,
        "unknown accelerator model": 1,
    }
    assert source.report.first["negative duration_s"] == f"{path}:4 column duration_s"
    with pytest.raises(TraceError, match=r"t.csv:4: column 'duration_s': negative duration_s"):
        list(open_trace(path, "native", LoadOptions(strict=True)))


def test_bad_files_name_file_row_and_column(tmp_path: Path) -> None:
    missing = _write(tmp_path, "m.csv", "id,duration_s\nx,1\n")
    with pytest.raises(TraceError, match=r"m.csv:1: column 'submit_time': missing required column"):
        list(open_trace(missing, "native"))
    with pytest.raises(TraceError, match="unknown trace format 'parquet'"):
        open_trace(missing, "parquet")
    with pytest.raises(TraceError, match="no such file"):
        open_trace(tmp_path / "absent.csv", "native")
    with pytest.raises(TraceError, match="empty"):
        list(open_trace(_write(tmp_path, "e.csv", ""), "native"))


def test_openb_with_and_without_time_columns(tmp_path: Path) -> None:
    full = _write(
        tmp_path,
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n"
        "p0,4000,1024,1,500,V100M16|V100M32,LS,Running,10,110,10\n"
        "p1,8000,2048,2,1000,,BE,Succeeded,20,80,20\n"
        "p2,1000,512,1,0,,LS,Running,30,40,30\n"
        "p3,1000,512,0,0,,Burstable,Failed,40,30,40\n",
    )
    source = open_trace(full, "alibaba-openb")
    pods = list(source)
    assert [p.id for p in pods] == ["p0", "p1"]
    assert pods[0].devices_per_worker == 0.5 and pods[0].models == ("V100-16G", "V100-32G")
    assert pods[0].kind is JobKind.INFERENCE and pods[1].priority is PriorityClass.BEST_EFFORT
    assert (pods[0].submit_time, pods[0].duration_s) == (10, 100)
    assert source.report.skipped == {"gpu_milli out of range (1-1000)": 1, "negative duration": 1}
    bare = _write(tmp_path, "bare.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\nq,1,1,8,1000,\n")
    (only,) = list(open_trace(bare, "alibaba-openb"))
    assert (only.devices_per_worker, only.duration_s, only.submit_time) == (8.0, 0.0, 0.0)


def test_openb_shared_sample() -> None:
    pods = list(open_trace(public_trace("alibaba-openb", "openb_pod_list_default.csv"), "alibaba-openb"))
    assert len(pods) == 8152
    nodes = load_nodes(public_trace("alibaba-openb", "openb_node_list_gpu_node.csv"))
    assert (len(nodes), sum(n.devices for n in nodes)) == (1213, 6212)
    assert {n.model for n in nodes} >= {"G2", "T4", "V100-16G"}


def test_pai_headerless_tables_with_job_table_and_machines(tmp_path: Path) -> None:
    _write(tmp_path, "pai_job_table.csv", "j1,i1,alice,Terminated,100,900\nj2,i2,bob,Failed,150,400\n")
    tasks = _write(
        tmp_path,
        "pai_task_table.csv",
        "j1,worker,4,Terminated,120,720,600,29.3,50,T4\n"
        "j2,tensorflow,1,Failed,160,400,800,50,800,MISC\n"
        "j3,worker,1,Running,200,,100,10,100,V100\n"
        "j4,ps,2,Terminated,300,350,200,5,,\n",
    )
    source = open_trace(tasks, "alibaba-pai")
    jobs = list(source)
    assert [j.id for j in jobs] == ["j1/worker", "j2/tensorflow", "j4/ps"]
    first = jobs[0]
    assert (first.workers, first.devices_per_worker, first.cpu_milli_per_worker) == (4, 0.5, 6000)
    assert first.models == ("T4",) and first.duration_model == "T4" and first.user == "alice"
    assert (first.submit_time, first.duration_s) == (100, 600)
    assert jobs[1].devices_per_worker == 8.0 and jobs[1].models == ()
    assert jobs[2].devices_per_worker == 0.0
    assert source.report.skipped == {"no end time (status Running)": 1}
    spec = _write(tmp_path, "pai_machine_spec.csv", "m1,V100,96,512,8\nm2,CPU,96,512,0\nm3,T4,64,512,2\n")
    machines = load_nodes(spec)
    assert [(n.id, n.model, n.devices, n.cpu_milli) for n in machines] == [
        ("m1", "V100-32G", 8, 96000),
        ("m3", "T4", 2, 64000),
    ]


def test_pai_header_files_match_the_loader() -> None:
    from simulations.loaders.pai import JOB_COLUMNS, MACHINE_COLUMNS, TASK_COLUMNS

    def header(table: str) -> tuple[str, ...]:
        return tuple(public_trace("alibaba-pai-2020", f"{table}.header").read_text().strip().split(","))

    assert header("pai_task_table") == TASK_COLUMNS
    assert header("pai_job_table") == JOB_COLUMNS
    assert header("pai_machine_spec") == MACHINE_COLUMNS


def test_philly_csv_and_json(tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path,
        "philly.csv",
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-09 07:01:55,66.0,1,66.0,vc1\n2017-10-09 06:13:03,2951.0,16,0,vc2\n2017-10-09 06:14:03,5,0,0,vc2\n",
    )
    source = open_trace(csv_path, "philly")
    jobs = list(source)
    assert [(j.workers, j.devices_per_worker, j.tenant) for j in jobs] == [(1, 1.0, "vc1"), (2, 8.0, "vc2")]
    assert jobs[0].submit_time - jobs[1].submit_time == 2932
    assert source.report.skipped == {"no GPUs": 1}
    records = [
        {
            "status": "Pass",
            "vc": "vc9",
            "jobid": "application_1",
            "user": "u1",
            "submitted_time": "2017-10-03 10:00:00",
            "attempts": [
                {
                    "start_time": "2017-10-03 10:05:00",
                    "end_time": "2017-10-03 10:15:00",
                    "detail": [{"ip": "m1", "gpus": ["g0", "g1"]}],
                },
                {
                    "start_time": "2017-10-03 11:00:00",
                    "end_time": "2017-10-03 11:05:00",
                    "detail": [{"ip": "m1", "gpus": ["g0", "g1"]}],
                },
            ],
        },
        {
            "status": "Killed",
            "vc": "vc9",
            "jobid": "application_2",
            "submitted_time": "2017-10-03 10:01:00",
            "attempts": [],
        },
    ]
    json_path = _write(tmp_path, "cluster_job_log", json.dumps(records, indent=2))
    source = open_trace(json_path, "philly")
    (job,) = list(source)
    assert (job.id, job.duration_s, job.devices_per_worker, job.user) == ("application_1", 900.0, 2.0, "u1")
    assert source.report.skipped == {"never ran (no complete attempt)": 1}


def test_philly_public_trace_counts() -> None:
    source = open_trace(public_trace("philly", "philly.csv.gz"), "philly")
    assert sum(1 for _ in source) + source.report.total_skipped == 82247


def test_helios_dates_nodes_and_cpu_jobs(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "cluster_log.csv",
        "job_id,user,gpu_num,cpu_num,node_num,state,submit_time,start_time,end_time,duration,vc\n"
        "h1,u1,16,64,2,COMPLETED,2020-04-01 00:00:00,2020-04-01 00:01:00,2020-04-01 01:01:00,3600,vcA\n"
        "h2,u2,0,4,1,COMPLETED,2020-04-01 00:00:10,2020-04-01 00:00:10,2020-04-01 00:10:10,600,vcB\n"
        "h3,u3,1,4,1,CANCELLED,2020-04-01 00:00:20,,,0,vcB\n",
    )
    source = open_trace(path, "helios")
    jobs = list(source)
    assert [(j.workers, j.devices_per_worker, j.cpu_milli_per_worker, j.tenant) for j in jobs] == [
        (2, 8.0, 32000, "vcA"),
        (1, 0.0, 4000, "vcB"),
    ]
    assert source.report.skipped == {"zero duration": 1}
    with pytest.raises(TraceError, match="duration"):
        list(open_trace(_write(tmp_path, "bad.csv", "job_id,gpu_num,submit_time\n1,1,0\n"), "helios"))


def test_gavel_job_list_uses_measured_steps_per_second(tmp_path: Path) -> None:
    rates = _write(
        tmp_path,
        "throughput_matrix_isolated.csv",
        "job_type,scale_factor_gpus,k80_steps_per_s,p100_steps_per_s,v100_steps_per_s\n"
        "ResNet-50 (batch size 64),1,1,2,4\n",
    )
    trace = _write(
        tmp_path,
        "jobs.trace",
        "ResNet-50 (batch size 64)\tcmd\tdir\t--steps\t1\t400\t1\t1\t-1\t0\n"
        "A3C\tcmd\tdir\t--steps\t0\t10\t1\t1\t-1\t5\n",
    )
    source = open_trace(trace, "gavel", LoadOptions(gavel_throughputs=rates))
    (job,) = list(source)
    assert job.duration_s == 100.0 and job.job_class.value == "cv-train" and job.duration_model
    assert source.report.skipped == {"no measured throughput for job type": 1}


def test_tiresias_shared_jobs_and_cluster() -> None:
    source = open_trace(public_trace("tiresias", "60_job.csv"), "tiresias", LoadOptions(max_devices_per_worker=4))
    jobs = list(source)
    assert len(jobs) == 60 and all(j.devices_per_worker <= 4 for j in jobs)
    cluster = load_nodes(public_trace("tiresias", "n32g4.csv"))
    assert (len(cluster), sum(n.devices for n in cluster)) == (32, 128)


def test_gang_shape_rule() -> None:
    assert gang_shape(8, 8) == (1, 8)
    assert gang_shape(32, 8) == (4, 8)
    assert gang_shape(6, 4) == (6, 1)
