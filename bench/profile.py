"""Where the CPU goes on the two hottest paths, sampled with py-spy, as a table anyone can
reproduce (`make profile`):

- `orders`: the member service taking paid orders (`POST /v1/orders`) in process, through its
  real middleware, service layer, database and outbox relay, for a fixed number of orders;
- `pipeline`: the points service consuming `order.paid` events (scenario 1 of `run.py`, small).

Each workload runs in a child process under `py-spy record --format raw`; the folded stacks are
reduced to the share of samples (inclusive) of the platform's own functions and the libraries'
self time, written to `bench/results/profile-<workload>.md` next to the raw stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
START_MARKS = {"orders": "orders: measuring", "pipeline": "the points service is consuming"}
OURS = re.compile(r"\((loyalty_\w+/[^:]+)")


async def orders_workload(count: int) -> None:
    import loyalty_member.bootstrap
    from loyalty_shared.db import EmbeddedCluster, ensure_database
    from loyalty_shared.kafka import ensure_topics
    from loyalty_shared.kafka.broker import EmbeddedBroker, free_port
    from loyalty_shared.testing import start_service

    root = Path(tempfile.mkdtemp(prefix="loyalty-profile-"))
    cluster = EmbeddedCluster(root / "pg", delete_on_exit=True)
    try:
        with EmbeddedBroker(free_port()) as broker:
            topics = ["loyalty.orders", "loyalty.members", "loyalty.points", "loyalty.coupons"]
            await ensure_topics(broker.bootstrap, topics, 6)
            server = cluster.url("postgres")
            await ensure_database(server, "profile_member")
            member = await start_service(
                loyalty_member.bootstrap.definition(),
                database_url=server.replace("/postgres?", "/profile_member?"),
                bootstrap=broker.bootstrap,
            )
            try:
                ids = []
                for i in range(100):
                    body = {"phone": f"139{i:08d}", "channel": "pos"}
                    ids.append((await member.client.post("/v1/members", json=body)).json())
                run = uuid.uuid4().hex[:8]
                print(f"orders: measuring {count}...", flush=True)
                started = time.process_time()
                for i in range(count):
                    response = await member.client.post(
                        "/v1/orders",
                        json={
                            "channel": "pos",
                            "external_id": f"PROFILE-{run}-{i}",
                            "member_id": ids[i % len(ids)]["member_id"],
                            "status": "paid",
                            "currency": "CNY",
                            "total_minor": 12900,
                            "paid_minor": 12900,
                            "lines": [],
                        },
                    )
                    assert response.status_code == 202, response.text
                spent = time.process_time() - started
                print(f"orders: {count} in {spent:.1f} CPU s ({spent / count * 1000:.2f} ms each)")
            finally:
                await member.stop()
    finally:
        cluster.stop()


def reduce(raw: Path, top: int) -> str:
    """The folded stacks as two tables: our functions by inclusive share, all by self share."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        samples, frames = int(n), stack.split(";")
        total += samples
        for name in {_name(f) for f in frames if OURS.search(f)}:
            inclusive[name] += samples
        own[_name(frames[-1])] += samples
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "| our function (inclusive) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {n / total:.1%} |" for name, n in inclusive.most_common(top)]
    lines += ["", "| where the time is spent (self) | share |", "|---|---:|"]
    lines += [f"| `{name}` | {n / total:.1%} |" for name, n in own.most_common(top)]
    return "\n".join(lines) + "\n"


def _name(frame: str) -> str:
    """`func (path/to/module.py:12)` -> `func (module.py)`, without site-packages prefixes."""
    match = re.match(r"(.*) \((?:.*/)?([^/]+?):\d+\)$", frame)
    return f"{match.group(1)} ({match.group(2)})" if match else frame


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload", choices=["orders", "pipeline"])
    parser.add_argument("--count", type=int, default=2000, help="orders, or pipeline events")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(orders_workload(args.count))
        return 0
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed (it is in the dev dependencies: make sync)")
        return 2
    if args.workload == "orders":
        command = [sys.executable, __file__, "orders", "--child", "--count", str(args.count)]
    else:
        members = max(args.count // 10, 1)
        command = [
            sys.executable,
            str(HERE / "run.py"),
            "--scenarios",
            "pipeline",
            "--orders",
            str(args.count),
            "--members",
            str(members),
            "--out",
            tempfile.mkdtemp(prefix="loyalty-profile-"),
        ]
    RESULTS.mkdir(exist_ok=True)
    raw = RESULTS / f"profile-{args.workload}.folded"
    # sample only the measured phase: attach when the workload says it begins
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    spy_process = None
    for line in child.stdout:
        print(line, end="", flush=True)
        if spy_process is None and line.startswith(START_MARKS[args.workload]):
            record = ["record", "--format", "raw", "--rate", str(args.rate), "--output", str(raw)]
            spy_process = subprocess.Popen([spy, *record, "--pid", str(child.pid)])
    child.wait()
    if spy_process is None:
        print("the workload never began its measured phase")
        return 1
    spy_process.wait()
    report = f"# py-spy profile: {args.workload} ({args.count})\n\n" + reduce(raw, args.top)
    (RESULTS / f"profile-{args.workload}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
