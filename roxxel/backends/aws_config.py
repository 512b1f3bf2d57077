"""What botocore would sign an S3 request to AWS with, read without botocore, where the
meaning is plain.

:func:`aws_settings` gives the credentials, the configured region, the addressing style
and the CA bundle that s3fs's client (aiobotocore, on botocore's configuration chain)
would use for the same ``storage_options`` and environment, or None wherever that
needs botocore to decide. The environment and the shared files are read the way
botocore 1.43 reads them (:mod:`botocore.configloader`: ``configparser.RawConfigParser``,
``[profile name]`` sections in the config file, the credentials file's sections merged
over them), and credentials are taken in botocore's order, so that the fast path never
signs with other credentials than s3fs would:

1. ``key``/``secret`` (and ``token``) in ``storage_options``;
2. the environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, and
   ``AWS_SECURITY_TOKEN`` or else ``AWS_SESSION_TOKEN``;
3. the shared credentials file's profile (``AWS_SHARED_CREDENTIALS_FILE``, else
   ``~/.aws/credentials``), then the config file's (``AWS_CONFIG_FILE``, else
   ``~/.aws/config``), static keys only; the profile is ``AWS_DEFAULT_PROFILE``, else
   ``AWS_PROFILE``, else ``default``.

Everything botocore would look at before or instead of those, or that changes where a
request goes or how it travels, makes :func:`aws_settings` return None (s3fs then reads,
as before): a profile with any setting outside a short list of plain ones (``role_arn``,
``sso_*``, ``credential_process``, ``web_identity_token_file``, ``login_session``,
``endpoint_url``, ``ca_bundle``, ``use_fips_endpoint``, ``s3`` acceleration or dual-stack,
and every setting not known here), an ``AWS_*`` environment variable outside a list of
plain ones (``AWS_ENDPOINT_URL(_S3)``, ``AWS_WEB_IDENTITY_TOKEN_FILE``,
``AWS_ROLE_ARN``, ``AWS_USE_FIPS_ENDPOINT``, ``AWS_USE_DUALSTACK_ENDPOINT``,
``AWS_CREDENTIAL_EXPIRATION``, ...), a proxy, partial credentials, a named profile that
does not exist, a file that does not parse, a region outside AWS's commercial partition,
and no static credentials at all (containers, instance roles). Nothing here logs or
shows a credential: :class:`Credentials` hides them from ``repr``.

Reading these ourselves departs on purpose from the rule that fsspec and the SDKs find
credentials: importing botocore and making a client costs a fresh process more than a
whole warm open may. So it is done only where the answer is botocore's own (the tests
compare it with botocore's resolver), and everything else is left to botocore.
"""

from __future__ import annotations

import configparser
import copy
import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from .aws_endpoint import plain_region

__all__ = ["AwsSettings", "Credentials", "Profile", "aws_settings", "ca_bundle", "chain_credentials",
           "load_profile"]

log = logging.getLogger(__name__)

# AWS_* variables that change neither the credentials found before the shared files, nor
# where or how an S3 GET goes
_PLAIN_ENV = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ACCOUNT_ID", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_EC2_METADATA_DISABLED",
    "AWS_METADATA_SERVICE_TIMEOUT", "AWS_METADATA_SERVICE_NUM_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS", "AWS_PAGER", "AWS_DEFAULT_OUTPUT", "AWS_SDK_UA_APP_ID", "AWS_EXECUTION_ENV",
    "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION",
})
# where credentials come from only after the shared files, or for other tools
_PLAIN_ENV_PREFIXES = ("AWS_CONTAINER_", "AWS_LAMBDA_", "AWS_XRAY_", "AWS_CLI_")
_PLAIN_PROFILE = frozenset({
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "aws_security_token",
    "aws_account_id", "region", "output", "retry_mode", "max_attempts", "metadata_service_timeout",
    "metadata_service_num_attempts", "request_checksum_calculation", "response_checksum_validation",
    "tcp_keepalive", "parameter_validation", "sdk_ua_app_id", "s3",
})
_PLAIN_PROFILE_PREFIXES = ("cli_",)  # the AWS CLI's own settings
# the AWS CLI's transfer settings live in the profile's ``s3`` section too
_PLAIN_S3_SECTION = frozenset({
    "addressing_style", "max_concurrent_requests", "max_queue_size", "multipart_threshold",
    "multipart_chunksize", "max_bandwidth", "preferred_transfer_client", "target_bandwidth",
    "io_chunksize", "payload_signing_enabled",
})
_ADDRESSING = ("auto", "virtual", "path")
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})


class Credentials(NamedTuple):
    """An access key, its secret and a session token (None without one)."""

    key: str
    secret: str
    token: str | None

    def __repr__(self) -> str:
        return "Credentials(***)"

    __str__ = __repr__


class Profile(NamedTuple):
    """A profile of the shared files: its name, its settings (the config file's merged
    with the credentials file's, as botocore's ``full_config``), and each file's own."""

    name: str
    merged: dict[str, Any]
    config_file: dict[str, Any]
    credentials_file: dict[str, Any]

    def __repr__(self) -> str:  # the settings may hold keys
        return f"Profile({self.name!r}, settings={sorted(self.merged)})"

    __str__ = __repr__


class AwsSettings:
    """What an S3 GET to AWS is sent with (see :func:`aws_settings`): ``region`` is None
    where none is configured (the bucket's is to be found); ``addressing_style`` is
    "auto", "virtual" or "path". Its repr shows no credentials."""

    __slots__ = ("addressing_style", "ca_bundle", "credentials", "region")

    def __init__(self, credentials: Credentials, region: str | None, addressing_style: str,
                 ca_bundle: str | None) -> None:
        self.credentials, self.region = credentials, region
        self.addressing_style, self.ca_bundle = addressing_style, ca_bundle

    def __repr__(self) -> str:
        return f"AwsSettings(region={self.region!r}, addressing_style={self.addressing_style!r})"


def aws_settings(options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AwsSettings | None:
    """The settings s3fs's client would have for these ``storage_options`` (without an
    ``endpoint_url``) in this environment, or None where botocore must decide (see the
    module docstring). ``options`` are those :mod:`.s3open` accepts as plain."""
    environ = os.environ if environ is None else environ
    reason = _unplain_environment(environ)
    profile = None if reason else load_profile(environ)
    if not reason and profile is None:
        reason = "the shared config files"
    if not reason and profile is not None:
        reason = _unplain_profile(profile.merged)
    if reason or profile is None:
        log.debug("AWS's endpoints are left to s3fs: %s", reason)
        return None
    if options.get("key"):
        credentials: Credentials | None = Credentials(options["key"], options["secret"], options.get("token") or None)
    elif options.get("token") or options.get("secret"):
        credentials = None  # botocore ignores a lone token: not plain
    else:
        credentials = chain_credentials(environ, profile)
    if credentials is None:
        log.debug("AWS's endpoints are left to s3fs: no static credentials")
        return None
    region = _configured_region(options, environ, profile)
    if region is not None and not plain_region(region):
        log.debug("AWS's endpoints are left to s3fs: a region outside the aws partition")
        return None
    style = _addressing_style(options, profile.merged)
    if style is None:
        return None
    return AwsSettings(credentials, region, style, ca_bundle(environ))


def chain_credentials(environ: Mapping[str, str], profile: Profile) -> Credentials | None:
    """The static credentials botocore's chain would find first, or None where it would
    find none of these (or fail on partial ones). Providers that come before the shared
    files (assume role, web identity, SSO) must have been ruled out by the caller."""
    if environ.get("AWS_ACCESS_KEY_ID", ""):
        secret = environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not secret or environ.get("AWS_CREDENTIAL_EXPIRATION", ""):
            return None  # botocore: PartialCredentialsError, or refreshable credentials
        token = next((environ[n] for n in ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN") if environ.get(n, "")), None)
        return Credentials(environ["AWS_ACCESS_KEY_ID"], secret, token)
    for source in (profile.credentials_file, profile.config_file):
        if "aws_access_key_id" in source:
            key, secret = source["aws_access_key_id"], source.get("aws_secret_access_key")
            token = next((source[n] for n in ("aws_security_token", "aws_session_token") if n in source), None)
            if not (isinstance(key, str) and key and isinstance(secret, str) and secret):
                return None
            if token is not None and not isinstance(token, str):
                return None
            return Credentials(key, secret, token or None)
    return None


def load_profile(environ: Mapping[str, str]) -> Profile | None:
    """The profile botocore would use, read from the shared config and credentials
    files; None where botocore would fail (a file that does not parse, a profile named
    but missing or empty)."""
    name = next((environ[n] for n in ("AWS_DEFAULT_PROFILE", "AWS_PROFILE") if n in environ), None)
    if name is not None and not name:
        return None
    try:
        config = _raw_config_parse(environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
        credentials = _raw_config_parse(environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    except (configparser.Error, UnicodeDecodeError, ValueError, OSError):
        return None
    profiles = _profile_map(config)
    merged = copy.deepcopy(profiles)
    for section, values in credentials.items():
        merged.setdefault(section, {}).update(values)
    if name is not None and name not in merged:
        return None
    name = name or "default"
    return Profile(name, merged.get(name, {}), profiles.get(name, {}), credentials.get(name, {}))


def ca_bundle(environ: Mapping[str, str] | None = None) -> str | None:
    """The CA bundle botocore verifies AWS's certificates with: ``AWS_CA_BUNDLE``, else
    certifi's, else the one botocore ships (None: the system's)."""
    environ = os.environ if environ is None else environ
    if environ.get("AWS_CA_BUNDLE"):
        return environ["AWS_CA_BUNDLE"]
    try:
        import certifi
    except ImportError:
        pass
    else:
        return certifi.where()
    import importlib.util

    spec = importlib.util.find_spec("botocore")  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        shipped = os.path.join(folder, "cacert.pem")
        if os.path.isfile(shipped):
            return shipped
    return None


def _unplain_environment(environ: Mapping[str, str]) -> str | None:
    for name, value in environ.items():
        if name.lower() in _PROXY_VARIABLES and value:
            return "a proxy in the environment"
        if name.startswith("AWS_") and name not in _PLAIN_ENV and not name.startswith(_PLAIN_ENV_PREFIXES):
            return f"{name} is set"
    import urllib.request

    if environ is os.environ and any(k in urllib.request.getproxies() for k in ("http", "https", "all")):
        return "a proxy in the system's settings"
    return None


def _unplain_profile(profile: Mapping[str, Any]) -> str | None:
    unknown = sorted(k for k in set(profile) - _PLAIN_PROFILE if not k.startswith(_PLAIN_PROFILE_PREFIXES))
    if unknown:
        return f"the profile sets {', '.join(unknown)}"
    s3 = profile.get("s3", {})
    if not isinstance(s3, Mapping) or set(s3) - _PLAIN_S3_SECTION:
        return "the profile's s3 settings"
    if s3.get("addressing_style", "auto") not in _ADDRESSING:
        return "the profile's addressing style"
    return None


def _configured_region(options: Mapping[str, Any], environ: Mapping[str, str], profile: Profile) -> str | None:
    """The region s3fs's client is made with (``client_kwargs``, ``config_kwargs``,
    ``AWS_DEFAULT_REGION``, the profile's), else ``AWS_REGION`` as a first guess
    (botocore does not read it; a wrong guess is answered with the bucket's region)."""
    client, config = options.get("client_kwargs") or {}, options.get("config_kwargs") or {}
    for region in (client.get("region_name"), config.get("region_name")):
        if region:
            return region
    if "AWS_DEFAULT_REGION" in environ:
        return environ["AWS_DEFAULT_REGION"]
    if "region" in profile.merged:
        return profile.merged["region"]
    return environ.get("AWS_REGION") or None


def _addressing_style(options: Mapping[str, Any], profile: Mapping[str, Any]) -> str | None:
    config = options.get("config_kwargs") or {}
    s3 = config.get("s3") or {}
    style = s3.get("addressing_style") or (profile.get("s3") or {}).get("addressing_style") or "auto"
    return style if style in _ADDRESSING else None


def _raw_config_parse(path: str) -> dict[str, dict[str, Any]]:
    """A shared file's sections, as :func:`botocore.configloader.raw_config_parse`
    gives them ({} for a file that does not exist)."""
    path = os.path.expanduser(os.path.expandvars(path))
    if not os.path.isfile(path):
        return {}
    parser = configparser.RawConfigParser()
    parser.read([path])
    sections: dict[str, dict[str, Any]] = {}
    for section in parser.sections():
        values: dict[str, Any] = {}
        for option in parser.options(section):
            value = parser.get(section, option)
            values[option] = _parse_nested(value) if value.startswith("\n") else value
        sections[section] = values
    return sections


def _parse_nested(value: str) -> dict[str, str]:
    parsed = {}
    for line in value.splitlines():
        line = line.strip()
        if line:
            key, rest = line.split("=", 1)  # ValueError without one: botocore's ConfigParseError
            parsed[key.strip()] = rest.strip()
    return parsed


def _profile_map(sections: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The config file's profiles, as :func:`botocore.configloader.build_profile_map`
    names them (``[profile x]`` is ``x``, ``[default]`` is ``default``)."""
    profiles: dict[str, dict[str, Any]] = {}
    for section, values in sections.items():
        if section.startswith("profile"):
            import shlex

            try:
                parts = shlex.split(section)
            except ValueError:
                continue
            if len(parts) == 2:
                profiles[parts[1]] = copy.deepcopy(values)
        elif section == "default":
            profiles[section] = copy.deepcopy(values)
    return profiles
