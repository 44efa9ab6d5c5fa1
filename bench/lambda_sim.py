"""The Lambda pattern, simulated at its cheapest: one CreateInvalidation per changed object,
`--concurrency` at a time (concurrent Lambda invocations), warm clients, no invocation cost.

Reads URL paths (one per line) from stdin; prints {"calls", "ok", "refused", "errors",
"seconds"} where refused counts TooManyInvalidationsInProgress answers."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("distribution")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    urls = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    local = threading.local()
    config = Config(retries={"mode": "standard", "max_attempts": 3})
    counts = {"ok": 0, "refused": 0, "errors": 0}
    lock = threading.Lock()

    def client() -> Any:
        if not hasattr(local, "client"):
            local.client = boto3.client(
                "cloudfront", endpoint_url=args.endpoint, region_name="us-east-1", config=config
            )
        return local.client

    def invalidate(url: str) -> None:
        outcome = "ok"
        try:
            client().create_invalidation(
                DistributionId=args.distribution,
                InvalidationBatch={
                    "Paths": {"Quantity": 1, "Items": [url]},
                    "CallerReference": uuid.uuid4().hex,
                },
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            outcome = "refused" if code == "TooManyInvalidationsInProgress" else "errors"
        with lock:
            counts[outcome] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(invalidate, urls))
    print(json.dumps({"calls": len(urls), **counts, "seconds": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
