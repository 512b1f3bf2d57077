"""The fast S3 open on AWS's own endpoints, without an ``endpoint_url`` (issue 17, part 6).

No test reaches the internet: :func:`roxxel.backends.aws_endpoint._aws_endpoint`, the one
place that names AWS's hosts, is patched to connect to the loopback moto server (or a
small stub that answers as S3 does to a request in the wrong region), keeping the
``Host`` header, the addressing and the signature AWS would get. Were the seam bypassed,
the requests would go to ``*.amazonaws.com`` and these tests fail (the recorded calls
and loopback addresses are checked too). Credentials and regions are compared with
botocore's own resolver in the same environments.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar
from unittest import mock

import pytest

import roxxel
from roxxel.backends import Store, aws_config, aws_endpoint, s3open
from roxxel.backends.s3open import DeferredS3FileSystem, deferred_s3, signed_get
from roxxel.manifest.io import read_manifest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ["s3fs", "aiohttp", "aiobotocore", "botocore", "gcsfs"]
EU_BUCKET, DOTTED_BUCKET = "roxxel-aws-eu", "roxxel.aws.dots"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "env-secret"}


def _port(server) -> int:
    return int(server.endpoint.rsplit(":", 1)[1])


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """An environment with no AWS settings, shared files in ``tmp_path`` (not written
    yet), no proxy, and no bucket regions remembered."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
            monkeypatch.delenv(name)
    files = SimpleNamespace(config=tmp_path / "aws-config", credentials=tmp_path / "aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(files.config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(files.credentials))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(aws_endpoint, "_regions", {})
    return files


def _loopback_seam(monkeypatch, port: int) -> list[tuple]:
    calls: list[tuple] = []
    real = aws_endpoint._aws_endpoint

    def loopback(bucket, region, path_style):
        calls.append((bucket, region, path_style))
        return real(bucket, region, path_style)._replace(scheme="http", address=("127.0.0.1", port))

    monkeypatch.setattr(aws_endpoint, "_aws_endpoint", loopback)
    return calls


@pytest.fixture
def seam(monkeypatch, s3_server, aws_env):
    """AWS's endpoints, connected to the moto server; the calls made to name them."""
    return _loopback_seam(monkeypatch, _port(s3_server))


@pytest.fixture
def sent(monkeypatch):
    """Every HTTP request sent: (method, path, Host header, Authorization, address)."""
    requests: list[tuple] = []
    real = http.client.HTTPConnection.request

    def recording(self, method, url, body=None, headers={}, **kwargs):  # noqa: B006 - http.client's default
        lowered = {k.lower(): v for k, v in headers.items()}
        requests.append((method, url, lowered.get("host"), lowered.get("authorization", ""), (self.host, self.port)))
        return real(self, method, url, body, headers, **kwargs)

    monkeypatch.setattr(http.client.HTTPConnection, "request", recording)
    return requests


@pytest.fixture(scope="module")
def aws_datasets(s3_server):
    """A dataset in an eu-west-1 bucket with a DNS-compatible name, and one in a bucket
    whose name has dots; written through the explicit endpoint."""
    fs = s3_server.filesystem()
    for bucket in (EU_BUCKET, DOTTED_BUCKET):
        if not fs.exists(bucket):
            fs.call_s3("create_bucket", Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    made = {}
    for bucket in (EU_BUCKET, DOTTED_BUCKET):
        url = f"s3://{bucket}/t{uuid.uuid4().hex[:8]}/ds"
        with roxxel.Writer(url, shard_bytes=256, storage_options=s3_server.storage_options) as writer:
            writer.extend(f"aws-record-{i:03d}".encode() * 2 for i in range(30))
        made[bucket] = SimpleNamespace(url=url, manifest=writer.manifest, path=url[len("s3://"):])
    return made


# -- the open: one signed GET, nothing heavy imported -----------------------------------

_CHILD = r"""
import http.client, json, sys
sent, calls = [], []
real_request = http.client.HTTPConnection.request
def recording(self, method, url, body=None, headers={}, **kw):
    h = {k.lower(): v for k, v in headers.items()}
    sent.append([method, url, h.get("host"), h.get("authorization", ""), self.host, self.port])
    return real_request(self, method, url, body, headers, **kw)
http.client.HTTPConnection.request = recording
import roxxel
from roxxel.backends import aws_endpoint
url, cache_dir, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
real = aws_endpoint._aws_endpoint
def loopback(bucket, region, path_style):
    calls.append([bucket, region, path_style])
    return real(bucket, region, path_style)._replace(scheme="http", address=("127.0.0.1", port))
aws_endpoint._aws_endpoint = loopback
with roxxel.open(url, cache_dir=cache_dir) as ds:
    first = bytes(ds[0]).decode()
    records = len(ds)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[4].split(",")))
print(json.dumps({"heavy": heavy, "calls": calls, "sent": sent, "first": first, "records": records}))
"""


def test_a_warm_open_on_aws_is_one_signed_get_and_imports_no_sdk(s3_server, aws_datasets, tmp_path):
    dataset = aws_datasets[EU_BUCKET]
    cache_dir = tmp_path / "cache"
    with roxxel.open(dataset.url, storage_options=s3_server.storage_options, cache_dir=str(cache_dir)) as ds:
        ds.warm()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    env.update(CREDENTIALS, AWS_DEFAULT_REGION="eu-west-1", PYTHONPATH=str(REPO), AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    out = subprocess.run([sys.executable, "-c", _CHILD, dataset.url, str(cache_dir), str(_port(s3_server)), ",".join(HEAVY)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["heavy"] == []
    assert (seen["records"], seen["first"]) == (30, "aws-record-000" * 2)
    assert seen["calls"] == [[EU_BUCKET, "eu-west-1", False]]
    key = dataset.path.split("/", 1)[1]
    [(method, target, host, authorization, address, port)] = seen["sent"]
    assert (method, target, host) == ("GET", f"/{key}/manifest.json", f"{EU_BUCKET}.s3.eu-west-1.amazonaws.com")
    assert (address, port) == ("127.0.0.1", _port(s3_server))
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDENV/")
    assert "/eu-west-1/s3/aws4_request" in authorization


def test_a_cold_read_on_aws_downloads_by_signed_ranged_gets_and_imports_no_sdk(s3_server, aws_datasets, tmp_path):
    """The shard a record needs comes by GETs signed here too (a fresh process's first
    parts no longer wait for s3fs and botocore), to the same virtual host."""
    dataset = aws_datasets[EU_BUCKET]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
    env.update(CREDENTIALS, AWS_DEFAULT_REGION="eu-west-1", PYTHONPATH=str(REPO), AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    out = subprocess.run([sys.executable, "-c", _CHILD, dataset.url, str(tmp_path / "cold"), str(_port(s3_server)),
                          ",".join(HEAVY)], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["heavy"] == []
    assert (seen["records"], seen["first"]) == (30, "aws-record-000" * 2)
    key = dataset.path.split("/", 1)[1]
    first_shard = dataset.manifest.shards.uris.tolist()[0]
    targets = [target for _, target, _, _, _, _ in seen["sent"]]
    assert targets[0] == f"/{key}/manifest.json" and f"/{key}/{first_shard}" in targets[1:]
    for method, _, host, authorization, address, port in seen["sent"]:
        assert (method, host, address, port) == ("GET", f"{EU_BUCKET}.s3.eu-west-1.amazonaws.com", "127.0.0.1",
                                                 _port(s3_server))
        assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDENV/")


def test_the_region_is_found_by_one_head_and_kept_for_the_process(seam, sent, aws_datasets, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    dataset = aws_datasets[EU_BUCKET]
    store = Store(dataset.url, {})
    assert read_manifest(store) == dataset.manifest
    assert isinstance(store.backend._fs, DeferredS3FileSystem)  # s3fs was never needed
    assert seam == [(EU_BUCKET, None, False), (EU_BUCKET, "eu-west-1", False)]
    head, get = sent
    assert head[:4] == ("HEAD", "/", f"{EU_BUCKET}.s3.amazonaws.com", "")  # unsigned
    assert get[0] == "GET" and "/eu-west-1/s3/" in get[3]
    assert read_manifest(Store(dataset.url, {})) == dataset.manifest
    assert seam[2:] == [(EU_BUCKET, "eu-west-1", False)]  # no second HEAD


@pytest.mark.parametrize("case", ["dots", "path-option", "path-profile"])
def test_buckets_are_addressed_by_path_where_botocore_would(case, seam, sent, aws_env, aws_datasets, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = DOTTED_BUCKET if case == "dots" else EU_BUCKET
    options = {"client_kwargs": {"region_name": "eu-west-1"}}
    if case == "path-option":
        options["config_kwargs"] = {"s3": {"addressing_style": "path"}}
    if case == "path-profile":
        aws_env.config.write_text("[default]\ns3 =\n  addressing_style = path\n  max_concurrent_requests = 20\n")
    dataset = aws_datasets[bucket]
    assert read_manifest(Store(dataset.url, options)) == dataset.manifest
    assert seam == [(bucket, "eu-west-1", True)]
    [(method, target, host, _, _)] = sent
    assert (method, target, host) == ("GET", f"/{dataset.path}/manifest.json", "s3.eu-west-1.amazonaws.com")


def test_a_profile_s_static_keys_sign_the_get(seam, sent, aws_env, aws_datasets, monkeypatch):
    aws_env.credentials.write_text("[dev]\naws_access_key_id = AKIDDEV\naws_secret_access_key = dev-secret\n")
    aws_env.config.write_text("[profile dev]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_PROFILE", "dev")
    dataset = aws_datasets[EU_BUCKET]
    assert read_manifest(Store(dataset.url, {})) == dataset.manifest
    assert seam == [(EU_BUCKET, "eu-west-1", False)]
    assert sent[0][3].startswith("AWS4-HMAC-SHA256 Credential=AKIDDEV/")


# -- the signature and the URL are botocore's -------------------------------------------


@pytest.mark.parametrize(("bucket", "region", "style"), [
    ("my-bucket", "eu-west-1", None),
    ("my-bucket", "us-east-1", None),
    ("my-bucket", "us-west-2", "path"),
    ("my-bucket", "ap-southeast-2", "virtual"),
    ("my.bucket", "eu-central-1", None),
    ("My_Bucket", "us-east-1", None),
    ("192.168.1.1", "eu-west-1", None),
])
@pytest.mark.parametrize("token", [None, "session/token+="])
def test_the_url_and_signature_are_botocores(bucket, region, style, token, aws_env):
    import botocore.session
    from botocore.config import Config

    key = "prefix/a b/é~manifest.json"
    now = time.gmtime(1765000000)
    client = botocore.session.Session().create_client(
        "s3", region_name=region, aws_access_key_id="AKID", aws_secret_access_key="SECRET", aws_session_token=token,
        config=Config(response_checksum_validation="when_required", s3={"addressing_style": style} if style else None),
    )
    captured = {}

    def stop(request, **kwargs):
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        captured.update(url=request.url, headers=headers)
        raise RuntimeError("captured")

    client.meta.events.register("before-send.s3.GetObject", stop)
    at = datetime.datetime(*now[:6])
    with mock.patch("botocore.auth.get_current_datetime", return_value=at), pytest.raises(RuntimeError, match="captured"):
        client.get_object(Bucket=bucket, Key=key)
    options = {"key": "AKID", "secret": "SECRET", "token": token, "client_kwargs": {"region_name": region}}
    if style:
        options["config_kwargs"] = {"s3": {"addressing_style": style}}
    request = s3open._request({k: v for k, v in options.items() if v is not None}, f"{bucket}/{key}")
    assert request is not None
    headers = request.headers(now)
    assert f"{request.where.scheme}://{request.where.host}{request.target}" == captured["url"]
    assert headers["Authorization"] == captured["headers"]["Authorization"]
    assert headers["x-amz-date"] == captured["headers"]["X-Amz-Date"]
    assert headers.get("x-amz-security-token") == captured["headers"].get("X-Amz-Security-Token")
    assert request.where.address == (request.where.host, 443)


# -- credentials and region: botocore's precedence --------------------------------------

_KEYS = "aws_access_key_id = {0}\naws_secret_access_key = {0}-secret\n"
SCENARIOS = {
    "env only": {"env": CREDENTIALS},
    "env over the credentials file": {"env": CREDENTIALS, "credentials": "[default]\n" + _KEYS.format("AKIDFILE")},
    "env tokens: AWS_SECURITY_TOKEN first": {
        "env": {**CREDENTIALS, "AWS_SESSION_TOKEN": "session", "AWS_SECURITY_TOKEN": "security"}},
    "env session token": {"env": {**CREDENTIALS, "AWS_SESSION_TOKEN": "session"}},
    "env over AWS_PROFILE": {"env": {**CREDENTIALS, "AWS_PROFILE": "dev"},
                                 "credentials": "[dev]\n" + _KEYS.format("AKIDDEV")},
    "credentials file over config file": {
        "credentials": "[default]\n" + _KEYS.format("AKIDFILE") + "aws_session_token = file-token\n",
        "config": "[default]\nregion = eu-west-3\n" + _KEYS.format("AKIDCONFIG")},
    "config file only": {"config": "[default]\n" + _KEYS.format("AKIDCONFIG") + "region = ap-south-1\n"
                         "output = json\ncli_pager =\n"},
    "AWS_PROFILE": {"env": {"AWS_PROFILE": "dev", "AWS_DEFAULT_REGION": "us-west-1"},
                        "credentials": "[default]\n" + _KEYS.format("AKIDDEFAULT") + "[dev]\n" + _KEYS.format("AKIDDEV"),
                        "config": "[profile dev]\nregion = eu-west-2\n"},
    "AWS_DEFAULT_PROFILE over AWS_PROFILE": {
        "env": {"AWS_PROFILE": "b", "AWS_DEFAULT_PROFILE": "a"},
        "credentials": "[a]\n" + _KEYS.format("AKIDA") + "[b]\n" + _KEYS.format("AKIDB")},
    "a profile's keys in the config file": {"env": {"AWS_PROFILE": "cfg"},
                                                "config": "[profile cfg]\n" + _KEYS.format("AKIDCFG") + "region = sa-east-1\n"},
    "[profile default] after [default]": {
        "config": "[default]\n" + _KEYS.format("AKIDPLAIN") + "\n[profile default]\n" + _KEYS.format("AKIDPROFILE")},
    "security token in the file": {
        "credentials": "[default]\n" + _KEYS.format("AKIDFILE") + "aws_security_token = sec\naws_session_token = ses\n"},
    "region in the credentials file": {"credentials": "[default]\n" + _KEYS.format("AKIDFILE") + "region = eu-north-1\n"},
    # where botocore would go further (STS, SSO, a process) or fail: the fast path steps aside
    "assume role": {"fallback": True, "config": "[default]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = base\n"
                        "[profile base]\n" + _KEYS.format("AKIDBASE")},
    "role in the credentials file": {"fallback": True, "credentials": "[default]\n" + _KEYS.format("AKIDFILE")
                                         + "role_arn = arn:aws:iam::1:role/r\nsource_profile = default\n"},
    "sso": {"fallback": True, "config": "[default]\nsso_start_url = https://x.awsapps.com/start\nsso_region = us-east-1\n"
                "sso_account_id = 1\nsso_role_name = r\n"},
    "sso session": {"fallback": True, "config": "[default]\nsso_session = s\n[sso-session s]\nsso_region = us-east-1\n"},
    "credential process": {"fallback": True, "config": "[default]\ncredential_process = /bin/false\n"},
    "web identity in the environment": {
        "fallback": True, "env": {"AWS_WEB_IDENTITY_TOKEN_FILE": "/tmp/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"},
        "credentials": "[default]\n" + _KEYS.format("AKIDFILE")},
    "partial environment": {"fallback": True, "env": {"AWS_ACCESS_KEY_ID": "AKIDENV"},
                                "credentials": "[default]\n" + _KEYS.format("AKIDFILE")},
    "partial file": {"fallback": True, "credentials": "[default]\naws_access_key_id = AKIDFILE\n"},
    "expiring environment credentials": {
        "fallback": True, "env": {**CREDENTIALS, "AWS_CREDENTIAL_EXPIRATION": "2030-01-01T00:00:00Z"}},
    "a missing profile": {"fallback": True, "env": {"AWS_PROFILE": "nope"}, "credentials": "[default]\n" + _KEYS.format("X")},
    "a file that does not parse": {"fallback": True, "credentials": "[default]\n" + _KEYS.format("X") + "[default]\n"},
    "no credentials": {"fallback": True, "config": "[default]\nregion = eu-west-1\n"},
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_credentials_and_region_are_botocores_and_s3fs_s(name, aws_env, monkeypatch):
    scenario = SCENARIOS[name]
    for variable, value in scenario.get("env", {}).items():
        monkeypatch.setenv(variable, value)
    if "config" in scenario:
        aws_env.config.write_text(scenario["config"])
    if "credentials" in scenario:
        aws_env.credentials.write_text(scenario["credentials"])
    settings = aws_config.aws_settings({})
    if scenario.get("fallback"):
        assert settings is None
        return
    import botocore.session

    session = botocore.session.Session()
    expected = session.get_credentials().get_frozen_credentials()
    assert settings is not None
    assert tuple(settings.credentials) == (expected.access_key, expected.secret_key, expected.token)
    assert settings.region == session.get_config_variable("region")
    import s3fs  # and the client s3fs itself makes (aiobotocore's chain) signs with the same

    client = s3fs.S3FileSystem(skip_instance_cache=True).connect()
    signer = client._request_signer._credentials
    assert tuple(settings.credentials) == (signer.access_key, signer.secret_key, signer.token)
    if settings.region is not None:
        assert client.meta.region_name == settings.region


def test_aws_region_is_only_a_guess_after_botocores_own(aws_env, monkeypatch):
    """botocore reads AWS_DEFAULT_REGION and the profile's region, not AWS_REGION: that
    is used only where neither is set (a wrong guess is redirected)."""
    for name, value in {**CREDENTIALS, "AWS_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    assert aws_config.aws_settings({}).region == "eu-west-1"
    aws_env.config.write_text("[default]\nregion = us-west-2\n")
    assert aws_config.aws_settings({}).region == "us-west-2"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-northeast-1")
    assert aws_config.aws_settings({}).region == "ap-northeast-1"
    assert aws_config.aws_settings({"config_kwargs": {"region_name": "eu-south-1"}}).region == "eu-south-1"


# -- everything else is s3fs's ----------------------------------------------------------

FALLBACKS = {
    "HTTPS_PROXY": {"env": {"HTTPS_PROXY": "http://proxy.example:3128"}},
    "https_proxy": {"env": {"https_proxy": "http://proxy.example:3128"}},
    "ALL_PROXY": {"env": {"ALL_PROXY": "socks5://proxy.example:1080"}},
    "AWS_ENDPOINT_URL": {"env": {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}},
    "AWS_ENDPOINT_URL_S3": {"env": {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}},
    "FIPS": {"env": {"AWS_USE_FIPS_ENDPOINT": "true"}},
    "dual-stack": {"env": {"AWS_USE_DUALSTACK_ENDPOINT": "true"}},
    "us-east-1 regional setting": {"env": {"AWS_S3_US_EAST_1_REGIONAL_ENDPOINT": "regional"}},
    "web identity": {"env": {"AWS_WEB_IDENTITY_TOKEN_FILE": "/tmp/t", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}},
    "profile with role_arn": {"config": "[default]\nrole_arn = arn:aws:iam::1:role/r\ncredential_source = Environment\n"},
    "sso profile": {"config": "[default]\nsso_session = s\n[sso-session s]\nsso_region = us-east-1\n"},
    "profile endpoint_url": {"config": "[default]\nendpoint_url = http://127.0.0.1:9\n"},
    "profile services": {"config": "[default]\nservices = local\n[services local]\ns3 =\n  endpoint_url = http://x\n"},
    "profile ca_bundle": {"config": "[default]\nca_bundle = /etc/ssl/other.pem\n"},
    "acceleration": {"config": "[default]\ns3 =\n  use_accelerate_endpoint = true\n"},
    "profile FIPS": {"config": "[default]\nuse_fips_endpoint = true\n"},
    "China": {"env": {"AWS_DEFAULT_REGION": "cn-north-1"}},
    "GovCloud": {"options": {"client_kwargs": {"region_name": "us-gov-west-1"}}},
    "a lone token": {"env": {"AWS_ACCESS_KEY_ID": ""}, "options": {"token": "t"}},
    "anonymous": {"options": {"anon": True}},
    "requester pays": {"options": {"requester_pays": True}},
    "a profile option": {"options": {"profile": "dev"}},
    "virtual addressing forced": {"options": {"config_kwargs": {"s3": {"addressing_style": "virtual"}}}},
    "fsspec's s3 configuration": {"fsspec_conf": {"endpoint_url": "http://127.0.0.1:9"}},
    "an S3 Express bucket": {"bucket": "roxxel--use1-az4--x-s3"},
    "an access point ARN": {"bucket": "arn:aws:s3:us-east-1:1:accesspoint"},
}


_DECIDED_BY_OPTIONS = {"anonymous", "requester pays", "a profile option", "virtual addressing forced",
                       "fsspec's s3 configuration"}


@pytest.mark.parametrize("name", [None, *FALLBACKS])
def test_what_the_fast_path_does_not_repeat_goes_to_s3fs(name, seam, aws_env, aws_datasets, monkeypatch):
    case = FALLBACKS.get(name, {})
    for variable, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "eu-west-1", **case.get("env", {})}.items():
        monkeypatch.setenv(variable, value)
    if "config" in case:
        aws_env.config.write_text(case["config"])
    if "fsspec_conf" in case:
        import fsspec.config

        monkeypatch.setitem(fsspec.config.conf, "s3", case["fsspec_conf"])
    dataset = aws_datasets[EU_BUCKET]
    url = dataset.url.replace(EU_BUCKET, case.get("bucket", EU_BUCKET))
    options = case.get("options", {})
    deferred = deferred_s3(url, options)
    if name in _DECIDED_BY_OPTIONS:  # s3fs makes the filesystem at once
        assert deferred is None
        return
    assert deferred is not None
    fs, path = deferred
    got = signed_get(fs, f"{path}/manifest.json", None)
    if name is None:  # the control: the same set-up without the change reads
        assert got is not None and json.loads(got.data)["records"] == dataset.manifest.records
        assert seam
    else:
        assert got is None
        assert seam == []  # nothing was sent


def test_an_answer_other_than_200_goes_to_s3fs(seam, sent, aws_datasets, monkeypatch):
    for name, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    fs, path = deferred_s3(aws_datasets[EU_BUCKET].url, {})
    assert signed_get(fs, f"{path}/missing.json", None) is None
    assert [s[0] for s in sent] == ["GET"]


def test_a_bucket_whose_region_is_unknown_goes_to_s3fs(seam, sent, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    fs, path = deferred_s3("s3://roxxel-no-such-bucket/ds", {})
    assert signed_get(fs, f"{path}/manifest.json", None) is None
    assert seam == [("roxxel-no-such-bucket", None, False)]
    assert [s[0] for s in sent] == ["HEAD"]  # and no GET


# -- the wrong region: one retry where S3 says --------------------------------------------


class _WrongRegionStub(http.server.BaseHTTPRequestHandler):
    """Answers as S3 does: the object from eu-west-1's endpoint, and from any other a
    301 with ``x-amz-bucket-region`` (or, ``mode`` "400", AuthorizationHeaderMalformed
    naming the region in its document; "loop": eu-west-1 redirects to eu-west-2)."""

    mode = "301"
    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        host, auth = self.headers.get("Host", ""), self.headers.get("Authorization", "")
        type(self).seen.append((host, auth))
        if ".eu-west-1." in host and self.mode != "loop":
            body = b'{"hello": "aws"}'
            self.send_response(200)
            self.send_header("ETag", '"abc"')
        elif self.mode == "400":
            body = (b"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; "
                    b"expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>")
            self.send_response(400)
        else:
            body = b"<Error><Code>PermanentRedirect</Code></Error>"
            self.send_response(301)
            self.send_header("x-amz-bucket-region", "eu-west-2" if ".eu-west-1." in host else "eu-west-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def wrong_region(monkeypatch, aws_env):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WrongRegionStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _WrongRegionStub.seen = []
    for name, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    _loopback_seam(monkeypatch, server.server_address[1])
    try:
        yield _WrongRegionStub
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode", ["301", "400"])
def test_a_get_in_the_wrong_region_is_sent_once_more_where_s3_says(mode, wrong_region, monkeypatch):
    monkeypatch.setattr(wrong_region, "mode", mode)
    fs, path = deferred_s3("s3://roxxel-moved/ds", {})
    got = signed_get(fs, f"{path}/manifest.json", None)
    assert got is not None and got.data == b'{"hello": "aws"}' and got.version == '"abc"'
    (first_host, first_auth), (second_host, second_auth) = wrong_region.seen
    assert first_host == "roxxel-moved.s3.amazonaws.com" and "/us-east-1/s3/" in first_auth
    assert second_host == "roxxel-moved.s3.eu-west-1.amazonaws.com" and "/eu-west-1/s3/" in second_auth
    assert aws_endpoint.known_region("roxxel-moved") == "eu-west-1"
    wrong_region.seen.clear()
    assert signed_get(fs, f"{path}/manifest.json", None) is not None
    assert [host for host, _ in wrong_region.seen] == ["roxxel-moved.s3.eu-west-1.amazonaws.com"]


def test_a_second_redirect_goes_to_s3fs(wrong_region, monkeypatch):
    monkeypatch.setattr(wrong_region, "mode", "loop")
    fs, path = deferred_s3("s3://roxxel-moved/ds", {})
    assert signed_get(fs, f"{path}/manifest.json", None) is None
    assert len(wrong_region.seen) == 2


# -- credentials stay inside ---------------------------------------------------------------


def test_credentials_appear_in_no_repr_and_no_log(seam, aws_env, aws_datasets, monkeypatch, caplog):
    secret = "never-show-this-secret"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSHOWN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "never-show-this-token")
    caplog.set_level(logging.DEBUG, logger="roxxel")
    settings = aws_config.aws_settings({})
    assert settings is not None
    request = s3open._request({}, f"{aws_datasets[EU_BUCKET].path}/manifest.json")
    fs, path = deferred_s3(aws_datasets[EU_BUCKET].url, {})
    assert signed_get(fs, f"{path}/manifest.json", None) is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # and a fallback, logged
    assert signed_get(fs, f"{path}/missing.json", None) is None
    aws_env.credentials.write_text("[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = never-show-this-2\n")
    profile = aws_config.load_profile(os.environ)
    assert profile is not None and profile.credentials_file
    shown = " ".join([repr(settings), str(settings.credentials), repr(request), repr(fs), repr(profile), str(profile),
                      caplog.text])
    assert "never-show-this" not in shown
    assert "proxy" in caplog.text


def test_credentials_read_here_do_not_travel_with_a_pickled_store(seam, aws_env, aws_datasets, monkeypatch):
    """A dataset pickled for a spawned worker or a Dask/Ray task carries the options it
    was given, never the keys roxxel read from this process's environment to sign its
    ranged reads: the worker finds its own."""
    import pickle

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-travel-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    dataset = aws_datasets[EU_BUCKET]
    store = Store(dataset.url)
    fs = store.backend._fs
    assert isinstance(fs, DeferredS3FileSystem)
    request = s3open.ranged_request(fs, f"{dataset.path}/manifest.json")
    assert request is not None and request.credentials[1] == "never-travel-secret"
    blob = pickle.dumps(store)
    assert b"never-travel-secret" not in blob and b"AKIDENV" not in blob
    again = pickle.loads(blob).backend._fs
    assert isinstance(again, DeferredS3FileSystem) and (again.url, again.storage_options) == (fs.url, {})
    assert "_ranged" not in again.__dict__


# -- TLS: AWS's certificate checked with botocore's CA bundle -------------------------------


class _TlsStub(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Host", ""))
        body = b'{"over": "tls"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def tls_stub(tmp_path, monkeypatch, aws_env):
    """An HTTPS server with a self-signed certificate for AWS's name of the bucket
    ``roxxel-tls`` in eu-west-1, reached through the seam (same host, the server's port)
    and a resolver that sends ``*.amazonaws.com`` to loopback."""
    import socket
    import ssl

    from tests.test_tls import certificate

    host = "roxxel-tls.s3.eu-west-1.amazonaws.com"
    cert, key = certificate(tmp_path, "aws", host)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TlsStub)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _TlsStub.seen = []
    real_resolve, real_endpoint, port = socket.getaddrinfo, aws_endpoint._aws_endpoint, server.server_address[1]

    def resolve(name, *args, **kwargs):
        return real_resolve("127.0.0.1" if str(name).endswith(".amazonaws.com") else name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(aws_endpoint, "_aws_endpoint",
                        lambda b, r, p: real_endpoint(b, r, p)._replace(address=(real_endpoint(b, r, p).host, port)))
    for name, value in {**CREDENTIALS, "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    try:
        yield SimpleNamespace(cert=cert, host=host, seen=_TlsStub.seen)
    finally:
        server.shutdown()
        server.server_close()


def test_aws_s_certificate_is_verified_with_the_ca_bundle_botocore_uses(tls_stub, monkeypatch):
    fs, path = deferred_s3("s3://roxxel-tls/ds", {})
    assert signed_get(fs, f"{path}/manifest.json", None) is None  # certifi's bundle: not trusted
    assert tls_stub.seen == []  # nothing was sent over the unverified connection
    monkeypatch.setenv("AWS_CA_BUNDLE", tls_stub.cert)
    got = signed_get(fs, f"{path}/manifest.json", None)
    assert got is not None and got.data == b'{"over": "tls"}'
    assert tls_stub.seen == [tls_stub.host]
