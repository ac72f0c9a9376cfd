"""The registry side of a pull: image references and the OCI distribution API.

References follow Docker's normalisation (`busybox` -> `docker.io/library/busybox:latest`).
The API is spoken over HTTPS with the system CA store, or plain HTTP for localhost and the
registries the user marks insecure. Auth: anonymous, the Bearer-token challenge flow (with
or without credentials; with an identity token, the OAuth2 refresh-token grant of the
Docker token spec: POST to the realm) and Basic, with credentials given by the caller
(`--user`, repositoryCredentials) or found in a docker-style config.json (agent.dockerconfig:
auths, credsStore, credHelpers). Manifests are fetched with the OCI and Docker
schema-2 media types; schema 1 is refused, as containerd refuses it.

Errors name the image and the cause: ImageNotFound (unknown repository, tag, digest or
blob), AuthError (credentials missing or refused), RegistryUnavailable (the registry cannot
be reached, or answers 5xx / 429: worth a retry), PullError (anything else wrong with what
it serves).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.containerd import Descriptor
from agent.errors import ImageNotFound, InvalidInput, NstaskError, Unavailable

__all__ = [
    "DOCKER_HUB",
    "MANIFEST_TYPES",
    "AuthConfig",
    "AuthError",
    "Credentials",
    "PullError",
    "Reference",
    "RegistryClient",
    "RegistryUnavailable",
    "credentials_for",
    "is_local",
    "normalize_ref",
    "parse_challenge",
    "parse_reference",
]

DOCKER_HUB = "docker.io"
_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")
INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
IMAGE_MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES
_ACCEPT = ", ".join(sorted(MANIFEST_TYPES))
_SCHEMA1 = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
# containerd's client refuses manifests over 4 MiB too: a manifest is a small document.
_MAX_MANIFEST = 4 << 20
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


class PullError(NstaskError):
    """The registry served something nstask will not use: a blob or manifest that fails
    verification, an unsupported media type, a schema-1 manifest, an unexpected answer."""

    kind = "pull_failed"


class RegistryUnavailable(Unavailable):
    """The registry (or its token service) cannot be reached, timed out, or answers 5xx /
    429. Not containerd's ContainerdUnavailable: the `default` pull behaviour falls back to a
    cached image on this, never on containerd's failures."""

    kind = "registry_unavailable"


class AuthError(PullError):
    """The registry wants credentials, or refused the ones given (HTTP 401/403).
    A PullError (not InvalidInput) because the same request may be right for another
    registry: the cause is the registry's answer; http_status 401 for the API."""

    http_status = 401
    kind = "auth_refused"


# --- references -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A normalised image reference: registry host, repository path, tag and/or digest."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        name = f"{self.registry}/{self.repository}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    @property
    def api_host(self) -> str:
        """Where the distribution API of the registry answers (Docker Hub's differs)."""
        return _HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest wins over the tag."""
        return self.digest or self.tag or "latest"


def parse_reference(text: str) -> Reference:
    """Docker's rules: a first component with '.', ':' or 'localhost' is a registry host;
    Docker Hub names without a namespace are under library/; neither tag nor digest means
    latest. Raises InvalidInput naming what is wrong."""
    if not text or text != text.strip():
        raise InvalidInput(f"image reference {text!r} is empty or has spaces")
    if _HEX64_RE.fullmatch(text):
        raise InvalidInput(
            f"image reference {text!r} looks like an image id, not a name; "
            "use name@sha256:<digest> to pull by digest"
        )
    rest, sep, digest_part = text.partition("@")
    digest: str | None = digest_part if sep else None
    tag = None
    if ":" in rest.rsplit("/", 1)[-1]:
        rest, tag = rest.rsplit(":", 1)
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, rest
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPO_RE.fullmatch(repository):
        raise InvalidInput(
            f"image reference {text!r}: invalid repository name {repository!r} "
            "(lower-case letters, digits and . _ - separators)"
        )
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise InvalidInput(f"image reference {text!r}: invalid tag {tag!r}")
    if digest is not None and not _DIGEST_RE.fullmatch(digest):
        raise InvalidInput(
            f"image reference {text!r}: invalid digest {digest!r} (sha256:<64 hex digits>)"
        )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


def normalize_ref(text: str) -> str:
    """The full name containerd's client would record: busybox ->
    docker.io/library/busybox:latest."""
    return str(parse_reference(text))


def is_local(name: str) -> bool:
    """Images under a `.local` registry name (nstask.local/...) are made here (image pack /
    import) and never pulled: no lookup of such a name ever leaves the host."""
    first = name.split("/", 1)[0]
    return "/" in name and first.split(":")[0].endswith(".local")


# --- credentials ------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry; `identity_token` is an OAuth2
    refresh token for the registry's token service (config.json `identitytoken`, or a
    credential helper's `<token>` answer), traded for access tokens by POST to the realm."""

    username: str
    password: str
    identity_token: str | None = None

    def __repr__(self) -> str:  # never print a password into a log
        token = ", identity_token=***" if self.identity_token else ""
        return f"Credentials(username={self.username!r}, password=***{token})"


AuthConfig = Credentials


def credentials_for(registry: str, config_path: Path | None = None) -> Credentials | None:
    """The credentials a docker-style config.json gives `registry`: credHelpers, credsStore,
    auths (agent.dockerconfig)."""
    from agent import dockerconfig

    return dockerconfig.credentials_for(registry, config_path)


def _basic(creds: Credentials) -> str:
    """The Authorization header value of HTTP Basic auth."""
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {realm: ..., ...})."""
    scheme, _, params = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', params)}


# --- the distribution API ---------------------------------------------------------------


def _error_code(body: bytes) -> str:
    """The first error code of a distribution error body (MANIFEST_UNKNOWN, ...)."""
    try:
        errors = json.loads(body).get("errors") or []
        return str(errors[0].get("code", "")) if errors else ""
    except (ValueError, AttributeError, IndexError):
        return ""


class RegistryClient:
    """One repository on one registry: its base URL, auth state and requests."""

    def __init__(
        self,
        ref: Reference,
        session: aiohttp.ClientSession,
        *,
        creds: Credentials | None,
        insecure: Sequence[str] = (),
    ) -> None:
        self.ref = ref
        self.session = session
        self.creds = creds
        host = ref.api_host
        marked = {h.removeprefix("http://").removeprefix("https://").rstrip("/") for h in insecure}
        hostname = host[1 : host.find("]")] if host.startswith("[") else host.split(":")[0]
        plain = hostname in ("localhost", "127.0.0.1", "::1") or host in marked
        self.base = f"{'http' if plain else 'https'}://{host}/v2/{ref.repository}"
        self._auth: str | None = None
        self._basic_asked = False

    @property
    def image(self) -> str:
        return str(self.ref)

    async def get(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """GET base/path, answering one auth challenge; the caller releases the response.
        401 after authenticating raises AuthError; a network failure raises Unavailable."""
        for attempt in range(2):
            sent = dict(headers or {})
            if self._auth:
                sent["Authorization"] = self._auth
            resp = await self._request(f"{self.base}/{path}", sent)
            if resp.status != 401 or attempt:
                break
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.release()
            if not await self._authenticate(challenge):
                break
        if resp.status in (401, 403):
            resp.release()
            raise self._auth_error(resp.status)
        return resp

    async def _request(self, url: str, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self.session.get(url, headers=headers)
        except aiohttp.ClientConnectorCertificateError as e:
            raise PullError(
                f"image {self.image}: TLS verification of registry {self.ref.registry} "
                f"failed ({e.certificate_error}); mark it insecure only if it serves "
                "plain HTTP",
                image=self.image,
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise RegistryUnavailable(
                f"image {self.image}: registry {self.ref.registry} is unreachable: "
                f"{e or type(e).__name__}",
                image=self.image,
            ) from None

    def _auth_error(self, status: int) -> AuthError:
        if self.creds is not None and not self.creds.username and self._basic_asked:
            why = (
                f"registry {self.ref.registry} wants Basic auth (a user name and password) "
                f"for {self.image}; the credentials found hold only an identity token"
            )
        elif self.creds is not None and not self.creds.username:
            why = f"registry {self.ref.registry} refused the identity token for {self.image}"
        elif self.creds is None:
            why = (
                f"registry {self.ref.registry} needs credentials for {self.image} "
                "(nstask image pull --user, repositoryCredentials, or the agent's docker "
                "config.json)"
            )
        else:
            why = (
                f"registry {self.ref.registry} refused the credentials of user "
                f"{self.creds.username!r} for {self.image}"
            )
        if status == 403:
            why += " (access denied)"
        return AuthError(why, image=self.image)

    async def _authenticate(self, challenge: str) -> bool:
        """Answer a WWW-Authenticate challenge; False when there is nothing to try."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            self._basic_asked = True
            if self.creds is None or not self.creds.username or self._auth is not None:
                return False
            self._auth = _basic(self.creds)
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        self._auth = f"Bearer {await self._token(params)}"
        return True

    async def _token(self, params: Mapping[str, str]) -> str:
        """A Bearer token from the realm of the challenge, anonymous or with credentials."""
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        if self.creds is not None and self.creds.identity_token:
            return await self._refresh_grant(realm, query, self.creds.identity_token)
        headers = {"Authorization": _basic(self.creds)} if self.creds else {}
        try:
            async with self.session.get(realm, params=query, headers=headers) as resp:
                if resp.status in (401, 403):
                    raise self._auth_error(resp.status)
                if resp.status >= 400:
                    raise PullError(
                        f"image {self.image}: token service {realm} answered HTTP {resp.status}",
                        image=self.image,
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise RegistryUnavailable(
                f"image {self.image}: token service {realm} is unreachable: {e}",
                image=self.image,
            ) from None
        except ValueError:
            raise PullError(
                f"image {self.image}: token service {realm} answered no JSON", image=self.image
            ) from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise PullError(
                f"image {self.image}: token service {realm} gave no token", image=self.image
            )
        return str(token)

    async def _refresh_grant(self, realm: str, query: Mapping[str, str], token: str) -> str:
        """The OAuth2 refresh-token grant of Docker's token spec: POST to the realm a form of
        grant_type=refresh_token, the identity token, service, scope and client_id; the
        answer's access_token is the Bearer token (a new refresh_token it may carry is not
        kept: config.json is the user's)."""
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": "nstask"}
        form |= query
        try:
            async with self.session.post(realm, data=form) as resp:
                if resp.status in (400, 401, 403):
                    raise AuthError(
                        f"registry {self.ref.registry}: token service {realm} refused the "
                        f"identity token for {self.image} (HTTP {resp.status})",
                        image=self.image,
                    )
                if resp.status == 429 or resp.status >= 500:
                    raise RegistryUnavailable(
                        f"image {self.image}: token service {realm} answered HTTP {resp.status}",
                        image=self.image,
                    )
                if resp.status >= 400:
                    raise PullError(
                        f"image {self.image}: token service {realm} answered HTTP {resp.status} "
                        "to the refresh-token grant",
                        image=self.image,
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise RegistryUnavailable(
                f"image {self.image}: token service {realm} is unreachable: {e}",
                image=self.image,
            ) from None
        except ValueError:
            raise PullError(
                f"image {self.image}: token service {realm} answered no JSON", image=self.image
            ) from None
        access = body.get("access_token") if isinstance(body, dict) else None
        if not access:
            raise PullError(
                f"image {self.image}: token service {realm} gave no access_token",
                image=self.image,
            )
        return str(access)

    def _status_error(self, status: int, body: bytes, what: str) -> NstaskError:
        """The error for a failed manifest or blob request."""
        code = _error_code(body)
        if status == 404:
            cause = {
                "NAME_UNKNOWN": "the repository is not in the registry",
                "BLOB_UNKNOWN": "the blob is not in the registry",
            }.get(code, "it is not in the registry")
            return ImageNotFound(f"image {self.image}: {what}: {cause}", image=self.image)
        if status == 429 or status >= 500:
            return RegistryUnavailable(
                f"image {self.image}: registry {self.ref.registry} answered HTTP {status} "
                f"{code} for {what}".rstrip(),
                image=self.image,
            )
        return PullError(
            f"image {self.image}: registry {self.ref.registry} answered HTTP {status} "
            f"{code} for {what}",
            image=self.image,
        )

    async def manifest(self, reference: str) -> tuple[Descriptor, bytes]:
        """The manifest or index `reference` (a tag or digest) names, verified by digest
        when asked by digest, with its media type; schema 1 and unknown types refused."""
        what = f"manifest {reference}"
        resp = await self.get(f"manifests/{reference}", headers={"Accept": _ACCEPT})
        async with resp:
            if resp.status != 200:
                raise self._status_error(resp.status, await resp.read(), what)
            if (resp.content_length or 0) > _MAX_MANIFEST:
                raise PullError(
                    f"image {self.image}: {what} is {resp.content_length} bytes, over the "
                    f"{_MAX_MANIFEST} byte limit for a manifest",
                    image=self.image,
                )
            body = await resp.content.read(_MAX_MANIFEST + 1)
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
        return self._check_manifest(reference, media, body)

    def _check_manifest(self, reference: str, media: str, body: bytes) -> tuple[Descriptor, bytes]:
        try:
            document = json.loads(body)
        except ValueError:
            raise PullError(
                f"image {self.image}: manifest {reference} is not JSON", image=self.image
            ) from None
        if not isinstance(document, dict):
            raise PullError(
                f"image {self.image}: manifest {reference} is not a JSON object", image=self.image
            )
        if media in ("", "application/json", "text/plain", "application/octet-stream"):
            media = str(document.get("mediaType", ""))
        if media in _SCHEMA1 or document.get("schemaVersion") == 1:
            raise PullError(
                f"image {self.image} uses the Docker schema 1 manifest format, which nstask "
                "(like containerd) does not pull; push it again with a current client",
                image=self.image,
            )
        if media not in MANIFEST_TYPES:
            raise PullError(
                f"image {self.image}: unsupported manifest media type {media!r}",
                image=self.image,
            )
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise PullError(
                f"image {self.image}: manifest digest mismatch (asked for {reference}, "
                f"got {digest})",
                image=self.image,
            )
        return Descriptor(media_type=media, digest=digest, size=len(body)), body

    async def blob(self, digest: str, *, offset: int = 0) -> aiohttp.ClientResponse:
        """The blob's response (200, or 206 from `offset` when the registry honours the
        Range); errors raised. The caller reads and releases it."""
        headers = {"Range": f"bytes={offset}-"} if offset else None
        resp = await self.get(f"blobs/{digest}", headers=headers)
        if resp.status not in (200, 206):
            body = await resp.read()
            resp.release()
            raise self._status_error(resp.status, body, f"blob {digest}")
        return resp
