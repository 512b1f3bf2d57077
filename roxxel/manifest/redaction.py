"""Redaction: the one rule for keeping credentials out of messages, logs and files.

:func:`redact` masks, anywhere in a text (a URL, or a message that quotes URLs):

- the user-info of every URL (``s3://key:secret@bucket`` -> ``s3://***@bucket``);
- every query string, whole (``?X-Amz-Signature=...&versionId=3`` -> ``?***``): a
  signed URL's credentials may sit in any parameter, under any name;
- any ``name=value`` parameter whose name looks like a credential (``token``,
  ``signature``, ``X-Amz-Security-Token``, ...) left outside a query string.

It is the stricter of the two rules roxxel used to have (one masked every query string,
the other only credential-like parameters but in every URL of a text).
"""

from __future__ import annotations

import re

__all__ = ["redact"]

_USERINFO = re.compile(r"(?<=//)[^/\s@]+@")
_QUERY = re.compile(r"\?[^\s#\"'<>]+")
_SECRET_PARAM = re.compile(
    r"(?i)([&;](?:x-amz-security-token|x-amz-signature|x-amz-credential|x-goog-signature|"
    r"x-goog-credential|access_token|token|signature|sig|secret|password|key|credential)=)"
    r"[^&\s\"']*"
)


def redact(text: str) -> str:
    """``text`` with URL user-info, query strings and credential-like parameters masked."""
    text = _USERINFO.sub("***@", text)
    text = _QUERY.sub("?***", text)
    return _SECRET_PARAM.sub(r"\1***", text)
