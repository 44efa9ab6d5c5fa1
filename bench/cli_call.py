"""What one `aws cloudfront create-invalidation --paths /PATH` costs, simulated: a fresh Python
process that imports boto3, builds a client and makes the one call (the real CLI does more).

Usage: cli_call.py ENDPOINT DISTRIBUTION_ID ROOT FILE_PATH"""

from __future__ import annotations

import sys
import uuid

import boto3


def main() -> int:
    endpoint, distribution, root, path = sys.argv[1:5]
    url = "/" + path[len(root.rstrip("/")) + 1 :]
    client = boto3.client("cloudfront", endpoint_url=endpoint, region_name="us-east-1")
    client.create_invalidation(
        DistributionId=distribution,
        InvalidationBatch={
            "Paths": {"Quantity": 1, "Items": [url]},
            "CallerReference": uuid.uuid4().hex,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
