"""Derives the expected signatures of src/aws/sign.rs's botocore tests, independently of
aws-sigv4. Run with the project's venv: .venv/bin/python src/aws/testdata/botocore_sign.py"""

import datetime
from unittest import mock

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# 2015-08-30T12:36:00Z, the time of AWS's SigV4 test suite.
WHEN = datetime.datetime(2015, 8, 30, 12, 36, 0)
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


class FixedTime(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return WHEN

    @classmethod
    def now(cls, tz=None):
        return WHEN.replace(tzinfo=tz) if tz else WHEN


class S3Unsigned(S3SigV4Auth):
    """S3 with UNSIGNED-PAYLOAD, as ecsd's GetObject."""

    def _should_sha256_sign_payload(self, request):
        return False


def authorization(auth_cls, creds, name, region, method, url, headers, body):
    request = AWSRequest(method=method, url=url, headers=headers, data=body)
    with mock.patch("botocore.auth.datetime.datetime", FixedTime):
        auth_cls(creds, name, region).add_auth(request)
    return request.headers["Authorization"]


# The published suite's get-vanilla, as a check of this script itself.
assert authorization(
    SigV4Auth, Credentials("AKIDEXAMPLE", SECRET), "service", "us-east-1", "GET",
    "https://example.amazonaws.com/", {}, b"",
).endswith("Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")

print("BOTOCORE_JSON", authorization(
    SigV4Auth, Credentials("AKIDEXAMPLE", SECRET, "the-token"), "secretsmanager", "us-east-1", "POST",
    "https://secretsmanager.us-east-1.amazonaws.com/",
    {"content-type": "application/x-amz-json-1.1", "x-amz-target": "secretsmanager.GetSecretValue"},
    b'{"SecretId":"arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf"}',
))
print("BOTOCORE_S3", authorization(
    S3Unsigned, Credentials("AKIDEXAMPLE", SECRET), "s3", "eu-west-1", "GET",
    "https://envs.s3.eu-west-1.amazonaws.com/dir/a%20b%2Bc.env", {}, b"",
))
