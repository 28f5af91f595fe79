"""Where bytes live: local paths and `s3://bucket/prefix` URIs (through boto3).

Every write is atomic: a temporary file in the same folder, fsync, then rename, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from hip.errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file + fsync + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut
    return path


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------
# S3 (any S3-compatible server) through boto3.
# --------------------------------------------------------------------------------------

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 32 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class S3Config:
    """Where the S3 server is and how to sign requests; unset fields fall back to the environment.

    `repr` never shows the secret.
    """

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    region: str | None = None
    max_attempts: int = 5

    def resolved(self) -> S3Config:
        """This config with unset fields filled from AWS_* environment variables."""
        env = os.environ
        return dataclasses.replace(
            self,
            endpoint_url=self.endpoint_url
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None,
            access_key_id=self.access_key_id or env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY") or None,
            region=self.region
            or env.get("AWS_REGION")
            or env.get("AWS_DEFAULT_REGION")
            or "us-east-1",
        )


def is_s3(uri: str | os.PathLike) -> bool:
    """True for `s3://bucket/key` URIs."""
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`bucket`, `a/b`)."""
    if not is_s3(uri):
        raise UserError(f"not an s3:// URI: {uri}")
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UserError(f"s3 URI has no bucket: {uri}")
    return bucket, key


def join(base: str | os.PathLike, name: str) -> str:
    """Join a local directory or an s3:// prefix with a file name."""
    base = str(base)
    if is_s3(base):
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


@functools.lru_cache(maxsize=16)
def _client_cached(config: S3Config, pid: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.endpoint_url,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        region_name=config.region,
        config=Config(
            retries={"max_attempts": config.max_attempts, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=10,
            read_timeout=60,
        ),
    )


def s3_client(config: S3Config | None = None) -> Any:
    """A boto3 S3 client (cached per config and process) with standard retries and backoff.

    Cached per process id: a client (and its connection pool) inherited through fork by a
    DataLoader worker would share sockets with its parent and mix up responses.
    """
    return _client_cached((config or S3Config()).resolved(), os.getpid())


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE
    )


class S3Unreachable(UserError):
    """The S3 endpoint did not answer (down or restarting), after botocore's own retries."""


class S3ObjectError(UserError):
    """S3 answered a request with a server-side error (e.g. InternalError) after retries."""


def _s3_error(exc: Exception, uri: str, config: S3Config | None) -> Exception:
    """Translate botocore failures into UserErrors naming endpoint and bucket (never secrets)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    cfg = (config or S3Config()).resolved()
    bucket = split_s3(uri)[0]
    where = f"endpoint {cfg.endpoint_url or 'AWS default'}, bucket {bucket!r}"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"}:
            return UserError(
                f"S3 rejected the credentials ({code}) at {where}: check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY"
            )
        if code in {"NoSuchBucket"}:
            return UserError(f"S3 bucket does not exist at {where}")
        if code in {"NoSuchKey", "404"}:
            return FileNotFoundError(f"no such object: {uri} ({where})")
        return S3ObjectError(f"S3 error {code} for {uri} at {where}")
    if isinstance(exc, EndpointConnectionError):
        return S3Unreachable(f"cannot reach S3 at {where}: {exc}")
    if isinstance(exc, NoCredentialsError):
        return UserError(f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID/SECRET")
    return exc


def _wrap(uri: str, config: S3Config | None) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    class _Ctx:
        def __enter__(self) -> None:
            return None

        def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
            if ev is not None and isinstance(ev, (ClientError, BotoCoreError)):
                raise _s3_error(ev, uri, config) from None
            return False

    return _Ctx()


def write_bytes(uri: str | os.PathLike, data: bytes, config: S3Config | None = None) -> str:
    """Write bytes atomically to a local path or s3:// URI (S3: temp key, copy, delete temp)."""
    uri = str(uri)
    if not is_s3(uri):
        return str(atomic_write_bytes(uri, data))
    bucket, key = split_s3(uri)
    client = s3_client(config)
    tmp_key = f"{key}.tmp-{uuid.uuid4().hex}"
    with _wrap(uri, config):
        client.upload_fileobj(io.BytesIO(data), bucket, tmp_key, Config=_transfer_config())
        try:
            client.copy({"Bucket": bucket, "Key": tmp_key}, bucket, key, Config=_transfer_config())
        finally:
            client.delete_object(Bucket=bucket, Key=tmp_key)
    return uri


def read_bytes(uri: str | os.PathLike, config: S3Config | None = None) -> bytes:
    """Read a whole local file or S3 object."""
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = split_s3(uri)
    with _wrap(uri, config):
        return s3_client(config).get_object(Bucket=bucket, Key=key)["Body"].read()


def open_read(uri: str | os.PathLike, config: S3Config | None = None) -> IO[bytes]:
    """A binary stream: a local file, or an S3 object streamed by boto3 (not downloaded first)."""
    uri = str(uri)
    if uri.startswith("file:"):
        uri = uri.split(":", 1)[1].removeprefix("//")
    if not is_s3(uri):
        return open(uri, "rb")
    bucket, key = split_s3(uri)
    with _wrap(uri, config):
        body = s3_client(config).get_object(Bucket=bucket, Key=key)["Body"]
    return body  # botocore StreamingBody: .read(n), .close()


def exists(uri: str | os.PathLike, config: S3Config | None = None) -> bool:
    """True if the local file or S3 object exists."""
    uri = str(uri)
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        s3_client(config).head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            return False
        raise _s3_error(exc, uri, config) from None


def size(uri: str | os.PathLike, config: S3Config | None = None) -> int | None:
    """Size in bytes of a local file or S3 object; None if it does not exist."""
    uri = str(uri)
    if not is_s3(uri):
        try:
            return Path(uri).stat().st_size
        except FileNotFoundError:
            return None
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    try:
        return int(s3_client(config).head_object(Bucket=bucket, Key=key)["ContentLength"])
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise _s3_error(exc, uri, config) from None


def list_names(folder: str | os.PathLike, config: S3Config | None = None) -> list[str]:
    """Names of the files directly in a local folder or under an s3:// prefix (all pages)."""
    folder = str(folder)
    if not is_s3(folder):
        p = Path(folder)
        return sorted(c.name for c in p.iterdir() if c.is_file()) if p.is_dir() else []
    bucket, prefix = split_s3(folder)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    pages = (
        s3_client(config)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
    )
    with _wrap(folder, config):
        return sorted(o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", []))


def delete(uri: str | os.PathLike, config: S3Config | None = None) -> None:
    """Delete a local file or S3 object if it exists."""
    uri = str(uri)
    if not is_s3(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, key = split_s3(uri)
    with _wrap(uri, config):
        s3_client(config).delete_object(Bucket=bucket, Key=key)


def iter_chunks(uri: str | os.PathLike, config: S3Config | None = None) -> Iterator[bytes]:
    """Stream the bytes of a file/object in 1 MiB chunks."""
    with open_read(uri, config) as f:
        while chunk := f.read(1 << 20):
            yield chunk


def check_bucket(uri: str, config: S3Config | None = None) -> None:
    """Fail early with a UserError if the bucket is missing or the credentials are wrong."""
    if not is_s3(uri):
        return
    bucket, _ = split_s3(uri)
    try:
        with _wrap(uri, config):
            s3_client(config).head_bucket(Bucket=bucket)
    except FileNotFoundError:  # HeadBucket answers a bare 404 for a missing bucket
        cfg = (config or S3Config()).resolved()
        raise UserError(
            f"S3 bucket does not exist at endpoint {cfg.endpoint_url or 'AWS default'}, "
            f"bucket {bucket!r}"
        ) from None
