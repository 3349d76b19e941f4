#!/usr/bin/env python3
"""Replicas on one database: how long a job waits after its replica dies or stops, how long a
queued job waits for an idle worker, and whether the database behind an api replica changes its
inference throughput. Real processes of the binary, real training jobs, each measurement on SQLite
and on PostgreSQL (a throw-away cluster made here with initdb/pg_ctl, as the tests make theirs).

    python3 bench/replicas.py [BINARY [PART...]]   (default target/release/vae-serve and every part:
                                                   takeover claims inference; needs VAE_DATA_DIR,
                                                   Debian's postgresql and wrk)

- takeover after SIGKILL: a replica trains a job; it is killed mid-epoch; a second replica on the
  same database claims the job once the lease expires. Measured from the kill to the job running
  again (attempts = 2) and to its next recorded epoch, for the default lease (30 s, heartbeat 10 s)
  and a short one (5 s, 1 s).
- hand-over after SIGTERM: the same with a graceful stop (default lease).
- claim latency: two replicas with two workers each (four workers); jobs are submitted one at a
  time, alternating replicas, while every worker is idle; latency = the job's started_at minus its
  created_at (both the database's clock).
- inference: an api replica serving the shipped model, `POST /classify` with one PNG digit under wrk
  (bench/wrk_request.lua) at concurrency 1 and 64, SQLite and PostgreSQL alternating, median of three.
"""
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/vae-serve"
PARTS = sys.argv[2:] or ["takeover", "claims", "inference"]
DATA = os.environ.get("VAE_DATA_DIR", "../shared/data")
HERE = os.path.dirname(os.path.abspath(__file__))
# The model the api replicas serve: the MLP one every serving benchmark measures (bench/lib.sh).
SERVED_MODEL = "mnist-ssvae@1"


class Postgres:
    """A throw-away cluster on a free port; as root it belongs to the postgres user."""

    def __init__(self):
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not versions:
            raise SystemExit("needs Debian's postgresql (make test-tools installs it)")
        self.bin = os.path.dirname(versions[-1])
        self.dir = tempfile.mkdtemp(prefix="vae-bench-postgres-")
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.run("initdb", "-N", "--auth=trust", "-U", "postgres", "-D", f"{self.dir}/data")
        self.run("pg_ctl", "start", "-w", "-l", f"{self.dir}/log", "-D", f"{self.dir}/data",
                 "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1")

    def run(self, program, *args):
        command = [os.path.join(self.bin, program), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def database(self, name):
        self.run("createdb", "-h", self.dir, "-p", str(self.port), "-U", "postgres", name)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def close(self):
        self.run("pg_ctl", "stop", "-m", "immediate", "-D", f"{self.dir}/data")
        shutil.rmtree(self.dir)


POSTGRES = None
DATABASES = 0


def database_in(root, backend):
    """A fresh database of `backend` for the replicas under `root`."""
    global DATABASES
    if backend == "sqlite":
        return os.path.join(root, "state/vae.db")
    DATABASES += 1
    return POSTGRES.database(f"bench{DATABASES}")


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read() or b"null")


class Replica:
    def __init__(self, root, name, database, env, default_model="tiny", threads=1):
        self.log_path = os.path.join(root, f"{name}.log")
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [BINARY, "serve", "--addr", "127.0.0.1:0", "--device", "cpu", "--threads", str(threads),
             "--models-dir", os.path.join(root, "models"), "--database", database,
             "--data-dir", DATA, "--default-model", default_model],
            env={**os.environ, "VAE_GRPC_ADDR": "", "RUST_LOG": "info", **env}, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            match = re.search(r" listening addr=(\S+)", open(self.log_path).read())
            if match:
                self.base = "http://" + match.group(1)
                return
            time.sleep(0.05)
        raise SystemExit(f"{name} did not start:\n" + open(self.log_path).read())

    def job(self, job_id):
        return call("GET", f"{self.base}/v1/jobs/{job_id}")

    def submit(self, body):
        return call("POST", f"{self.base}/train", body)["job"]["id"]

    def stop(self, sig):
        self.process.send_signal(sig)
        self.process.wait(timeout=60)


def job_body(name, epochs, images, hidden):
    return {"name": name, "dataset": "mnist",
            "options": {"epochs": epochs, "batch_size": 50, "model": {"architecture": "mlp", "hidden": hidden, "latent_dim": 8}},
            "data": {"max_train": images, "validation_fraction": 0.1}}


def wait(what, condition, limit=600, every=0.02):
    deadline = time.time() + limit
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"timed out: {what}")


def fresh_root():
    root = tempfile.mkdtemp(prefix="vae-replicas-")
    subprocess.run([BINARY, "train", "--device", "cpu", "--dataset", "mnist", "--architecture", "mlp", "--name", "tiny",
                    "--epochs", "1", "--max-train", "1000", "--hidden", "64", "--latent-dim", "8",
                    "--models-dir", os.path.join(root, "models"), "--data-dir", DATA],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return root


def takeover(backend, lease, heartbeat, sig):
    root = fresh_root()
    database = database_in(root, backend)
    env = {"VAE_JOB_LEASE_SECS": str(lease), "VAE_JOB_HEARTBEAT_SECS": str(heartbeat)}
    first = Replica(root, "first", database, env)
    job_id = first.submit(job_body("long", 200, 6000, [256, 128]))
    wait("two epochs", lambda: len(first.job(job_id)["history"]) >= 2)
    second = Replica(root, "second", database, env)
    epochs_before = len(second.job(job_id)["history"])
    killed = time.time()
    first.stop(sig)
    stopped = time.time() - killed
    wait("the takeover", lambda: second.job(job_id)["attempts"] == 2)
    claimed = time.time() - killed
    wait("an epoch after the takeover", lambda: len(second.job(job_id)["history"]) > epochs_before)
    next_epoch = time.time() - killed
    second.stop(signal.SIGKILL)
    shutil.rmtree(root)
    return stopped, claimed, next_epoch


def claim_latency(backend, jobs=20):
    root = fresh_root()
    database = database_in(root, backend)
    env = {"VAE_TRAIN_WORKERS": "2"}
    replicas = [Replica(root, "a", database, env), Replica(root, "b", database, env)]
    latencies = []
    for n in range(jobs):
        replica = replicas[n % 2]
        job_id = replica.submit(job_body(f"job-{n}", 1, 500, [64]))
        done = wait("a job", lambda: (lambda j: j if j["state"] in ("succeeded", "failed") else None)(replica.job(job_id)), every=0.05)
        assert done["state"] == "succeeded", done
        parse = lambda t: time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + t[19:-1])
        latencies.append((parse(done["started_at"]) - parse(done["created_at"])) * 1000)
    for replica in replicas:
        replica.stop(signal.SIGKILL)
    shutil.rmtree(root)
    return latencies


def ready(replica):
    try:
        return call("GET", f"{replica.base}/readyz")["status"] == "ready"
    except urllib.error.HTTPError:
        return False


def inference(passes=3, seconds=10):
    """Median requests/s and p99 of an api replica per backend and concurrency."""
    root = tempfile.mkdtemp(prefix="vae-replicas-")
    shutil.copytree(os.path.join(HERE, "../models/mnist-ssvae"), os.path.join(root, "models/mnist-ssvae"))
    digit = os.path.join(root, "digit.png")
    subprocess.run([sys.executable, os.path.join(HERE, "digit_png.py"), os.path.join(DATA, "mnist"), digit], check=True)
    cells = {}
    for _ in range(passes):
        for backend in ("sqlite", "postgres"):
            replica = Replica(root, f"api-{backend}", database_in(root, backend), {"VAE_ROLE": "api"}, SERVED_MODEL, threads=2)
            wait("readiness", lambda: ready(replica))
            for c in (1, 64):
                run = lambda secs: subprocess.run(
                    ["wrk", "-t", "1" if c == 1 else "2", "-c", str(c), "-d", f"{secs}s", "-s", os.path.join(HERE, "wrk_request.lua"),
                     f"{replica.base}/classify"], env={**os.environ, "BODY": digit, "CONTENT_TYPE": "image/png"},
                    check=True, capture_output=True, text=True).stdout
                run(2)  # warm-up
                result = json.loads(run(seconds).strip().splitlines()[-1])
                assert result["non2xx"] == 0 and result["errors"] == 0, result
                cells.setdefault((backend, c), []).append(result)
            replica.stop(signal.SIGKILL)
    shutil.rmtree(root)
    return {key: (statistics.median(r["rps"] for r in runs), statistics.median(r["p99_ms"] for r in runs)) for key, runs in cells.items()}


def takeovers():
    print("| database | how the replica ended | lease / heartbeat | until the process was gone | until the job ran again | until its next epoch was recorded |")
    print("|---|---|---|---|---|---|")
    for backend in ("sqlite", "postgres"):
        for lease, heartbeat, sig, name in [(30, 10, signal.SIGKILL, "SIGKILL"), (5, 1, signal.SIGKILL, "SIGKILL"),
                                            (30, 10, signal.SIGTERM, "SIGTERM")]:
            stopped, claimed, epoch = takeover(backend, lease, heartbeat, sig)
            print(f"| {backend} | {name} | {lease} s / {heartbeat} s | {stopped:.2f} s | {claimed:.2f} s | {epoch:.2f} s |", flush=True)
    print()


def claims():
    for backend in ("sqlite", "postgres"):
        latencies = claim_latency(backend)
        print(f"claim latency on {backend}, 4 idle workers on 2 replicas, {len(latencies)} jobs: "
              f"median {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms", flush=True)
    print()


def inference_table():
    print("| api replica's database | POST /classify c=1: req/s, p99 | c=64: req/s, p99 |\n|---|---|---|")
    cells = inference()
    for backend in ("sqlite", "postgres"):
        (r1, p1), (r64, p64) = cells[(backend, 1)], cells[(backend, 64)]
        print(f"| {backend} | {r1:.0f}, {p1:.2f} ms | {r64:.0f}, {p64:.2f} ms |")


def main():
    global POSTGRES
    POSTGRES = Postgres()
    try:
        if "takeover" in PARTS:
            takeovers()
        if "claims" in PARTS:
            claims()
        if "inference" in PARTS:
            inference_table()
    finally:
        POSTGRES.close()


if __name__ == "__main__":
    main()
