"""What we know of one Glance image: the record and its locations (what proves
its bytes is image_handlers.trust's to say)."""
from __future__ import annotations

import dataclasses
from typing import Any

from image_handlers.locations import Location


@dataclasses.dataclass
class ImageInfo:
    id: str
    status: str
    disk_format: str | None = None
    container_format: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    owner: str | None = None
    name: str | None = None
    locations: list[Location] = dataclasses.field(default_factory=list)
    # Where the location list came from, and what was not available (for explain).
    location_sources: list[str] = dataclasses.field(default_factory=list)
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def has_data(self) -> bool:
        return self.status == 'active'
