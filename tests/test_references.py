import pytest

from imagesmith.errors import ReferenceFormatError
from imagesmith.oci.digests import Digest
from imagesmith.oci.references import Reference, parse_repository, sanitize_tag

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "api_host"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", "registry-1.docker.io"),
        ("ubuntu:23.04", "docker.io", "library/ubuntu", "23.04", "registry-1.docker.io"),
        ("acme/tool:1", "docker.io", "acme/tool", "1", "registry-1.docker.io"),
        ("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", "registry-1.docker.io"),
        ("index.docker.io/acme/x", "docker.io", "acme/x", "latest", "registry-1.docker.io"),
        ("ghcr.io/x/y:v1", "ghcr.io", "x/y", "v1", "ghcr.io"),
        ("localhost/x", "localhost", "x", "latest", "localhost"),
        ("127.0.0.1:5000/stack/py:3.11", "127.0.0.1:5000", "stack/py", "3.11", "127.0.0.1:5000"),
        (
            "Registry.Example.com:443/a/b",
            "registry.example.com:443",
            "a/b",
            "latest",
            "registry.example.com:443",
        ),
        ("a__b/c-d/e.f", "docker.io", "a__b/c-d/e.f", "latest", "registry-1.docker.io"),
    ],
)
def test_parse_normalises(text: str, registry: str, repository: str, tag: str, api_host: str) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.api_host) == (registry, repository, tag, api_host)


def test_digest_reference() -> None:
    ref = Reference.parse(f"ghcr.io/x/y@sha256:{HEX}")
    assert ref.tag is None
    assert ref.digest == Digest("sha256", HEX)
    assert ref.identifier == f"sha256:{HEX}"
    assert str(ref) == f"ghcr.io/x/y@sha256:{HEX}"
    both = Reference.parse(f"ubuntu:23.04@sha256:{HEX}")
    assert both.tag == "23.04" and both.identifier == f"sha256:{HEX}"


def test_str_and_familiar() -> None:
    ref = Reference.parse("ubuntu:23.04")
    assert str(ref) == "docker.io/library/ubuntu:23.04"
    assert ref.familiar() == "ubuntu:23.04"
    assert ref.with_tag("24.04").familiar() == "ubuntu:24.04"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "image name is required"),
        ("Ubuntu", "repository name .Ubuntu. must be lowercase"),
        ("ubuntu:", "invalid tag"),
        ("ubuntu:-x", "invalid tag"),
        ("ubuntu:" + "a" * 129, "invalid tag"),
        ("ubuntu@sha256:abc", "64"),
        ("ubuntu@sha256:../x", "invalid digest"),
        ("ubuntu@md5:" + "a" * 32, "unsupported digest algorithm"),
        (f"ubuntu@sha256:{'A' * 64}", "lowercase"),
        ("https://ghcr.io/x", "scheme"),
        ("a b", "whitespace"),
        ("ghcr.io/", "missing repository"),
        ("x//y", "repository"),
        ("ubuntu:tag\u00e9", "invalid tag"),
    ],
)
def test_invalid(text: str, fragment: str) -> None:
    with pytest.raises(ReferenceFormatError, match=fragment):
        Reference.parse(text)


def test_parse_repository() -> None:
    assert parse_repository("127.0.0.1:5000/stack").repository == "stack"
    with pytest.raises(ReferenceFormatError, match="without :tag"):
        parse_repository("127.0.0.1:5000/stack:v1")


def test_sanitize_tag() -> None:
    assert sanitize_tag("py-3.11+cuda/x") == "py-3.11_cuda_x"
    assert sanitize_tag(".hidden") == "_hidden"
    long = "a" * 64 + "b" * 10 + "c" * 64
    out = sanitize_tag(long)
    assert len(out) == 128 and out == "a" * 64 + "c" * 64
