"""The words imagesmith writes into images: config labels naming the package, the OCI
annotation prefix, and the profile script's path. One place, so the build that writes them and
the readers (repository index, pull) agree."""

from __future__ import annotations

PROFILE_SCRIPT_PATH = "etc/profile.d/imagesmith.sh"


# Config labels naming the package an image was built for (the last, top layer).
LABEL_NAME = "org.opencontainers.image.title"


LABEL_VERSION = "org.opencontainers.image.version"


LABEL_HASH = "io.imagesmith.package.hash"


ANNOTATION = "org.opencontainers.image."
