#!/usr/bin/env python3
"""Drives a Ceph RGW with a real S3 client (boto3) for tests/e2e/ceph_rgw.rs.

Reads one JSON object on stdin:

    {"endpoint": "http://127.0.0.1:PORT", "access_key": "...", "secret_key": "...",
     "bucket": "uploads",
     "topics": [{"name": "hook", "attributes": {"push-endpoint": "...", ...}}, ...],
     "events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
     "ops": [{"op": "put", "key": "...", "body": "..."},
             {"op": "delete", "key": "..."},
             {"op": "multipart", "key": "...", "parts": [5242880, 10]}]}

creates the topics through RGW's SNS API, the bucket, one notification configuration per topic
on it, then runs the operations in order. Prints one JSON object:
{"topics": [ARN, ...], "ops": [{"op": ..., "key": ..., "etag": ...}, ...]} (etag without quotes;
none for a delete).
"""
import json
import sys

import boto3
from botocore.config import Config


def main():
    spec = json.load(sys.stdin)
    kw = dict(
        endpoint_url=spec["endpoint"],
        aws_access_key_id=spec["access_key"],
        aws_secret_access_key=spec["secret_key"],
        region_name="default",
    )
    sns = boto3.client("sns", **kw)

    # A topic whose push-endpoint carries a password is only accepted from a client on HTTPS.
    # The test cluster speaks plain HTTP and trusts X-Forwarded-Proto (rgw_trust_forwarded_https),
    # as it would behind a TLS-terminating proxy.
    def forwarded_https(request, **_):
        request.headers["X-Forwarded-Proto"] = "https"

    sns.meta.events.register("before-send.sns.CreateTopic", forwarded_https)
    s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **kw)

    arns = []
    for t in spec["topics"]:
        arns.append(sns.create_topic(Name=t["name"], Attributes=t["attributes"])["TopicArn"])
    bucket = spec["bucket"]
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "TopicConfigurations": [
                {"Id": f"fngate-{i}", "TopicArn": arn, "Events": spec["events"]}
                for i, arn in enumerate(arns)
            ]
        },
    )

    done = []
    for op in spec["ops"]:
        key = op["key"]
        if op["op"] == "put":
            r = s3.put_object(Bucket=bucket, Key=key, Body=op["body"].encode())
            done.append({"op": "put", "key": key, "etag": r["ETag"].strip('"')})
        elif op["op"] == "delete":
            s3.delete_object(Bucket=bucket, Key=key)
            done.append({"op": "delete", "key": key, "etag": None})
        elif op["op"] == "multipart":
            up = s3.create_multipart_upload(Bucket=bucket, Key=key)
            parts = []
            for n, size in enumerate(op["parts"], start=1):
                p = s3.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=up["UploadId"],
                    PartNumber=n,
                    Body=bytes([0x61 + n]) * size,
                )
                parts.append({"PartNumber": n, "ETag": p["ETag"]})
            r = s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=up["UploadId"],
                MultipartUpload={"Parts": parts},
            )
            done.append({"op": "multipart", "key": key, "etag": r["ETag"].strip('"')})
        else:
            raise SystemExit(f"unknown op {op['op']!r}")
    json.dump({"topics": arns, "ops": done}, sys.stdout)


if __name__ == "__main__":
    main()
