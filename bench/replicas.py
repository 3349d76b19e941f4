#!/usr/bin/env python3
"""Replicas on one database: how long a job waits after its replica dies or stops, and how long
a queued job waits for an idle worker. Real processes of the binary, real training jobs.

    python3 bench/replicas.py [BINARY]     (default target/release/vae-serve; needs VAE_DATA_DIR)

- takeover after SIGKILL: a replica trains a job; it is killed mid-epoch; a second replica on the
  same database claims the job once the lease expires. Measured from the kill to the job running
  again (attempts = 2) and to its next recorded epoch, for the default lease (30 s, heartbeat 10 s)
  and a short one (5 s, 1 s).
- hand-over after SIGTERM: the same with a graceful stop (default lease).
- claim latency: two replicas with two workers each (four workers); jobs are submitted one at a
  time, alternating replicas, while every worker is idle; latency = the job's started_at minus its
  created_at (both the database's clock).
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/vae-serve"
DATA = os.environ.get("VAE_DATA_DIR", "../shared/data")


def call(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read() or b"null")


class Replica:
    def __init__(self, root, name, env):
        self.log_path = os.path.join(root, f"{name}.log")
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [BINARY, "serve", "--addr", "127.0.0.1:0", "--device", "cpu", "--threads", "1",
             "--models-dir", os.path.join(root, "models"), "--database", os.path.join(root, "state/vae.db"),
             "--data-dir", DATA, "--default-model", "tiny"],
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


def takeover(lease, heartbeat, sig):
    root = fresh_root()
    env = {"VAE_JOB_LEASE_SECS": str(lease), "VAE_JOB_HEARTBEAT_SECS": str(heartbeat)}
    first = Replica(root, "first", env)
    job_id = first.submit(job_body("long", 200, 6000, [256, 128]))
    wait("two epochs", lambda: len(first.job(job_id)["history"]) >= 2)
    second = Replica(root, "second", env)
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


def claim_latency(jobs=20):
    root = fresh_root()
    env = {"VAE_TRAIN_WORKERS": "2"}
    replicas = [Replica(root, "a", env), Replica(root, "b", env)]
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


def main():
    rows = []
    for lease, heartbeat, sig, name in [(30, 10, signal.SIGKILL, "SIGKILL"), (5, 1, signal.SIGKILL, "SIGKILL"), (30, 10, signal.SIGTERM, "SIGTERM")]:
        stopped, claimed, epoch = takeover(lease, heartbeat, sig)
        rows.append(f"| {name} | {lease} s / {heartbeat} s | {stopped:.2f} s | {claimed:.2f} s | {epoch:.2f} s |")
    print("| how the replica ended | lease / heartbeat | until the process was gone | until the job ran again | until its next epoch was recorded |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    latencies = claim_latency()
    print(f"\nclaim latency, 4 idle workers on 2 replicas, {len(latencies)} jobs: median {statistics.median(latencies):.1f} ms, "
          f"max {max(latencies):.1f} ms")


if __name__ == "__main__":
    main()
