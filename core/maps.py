"""A finished job's maps drawn as PNG when a client asks for them, not while the job runs.

The worker stores each map's values (``core/render.py``'s ``map_bytes``); the first request for a map
in a given form and colouring draws it here (heatmap: ~1-6 ms for 224x224 on one core; overlay: at
the photo's size) and keeps the PNG beside the job for the next one.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from core.contract import RenderOptions
from core.errors import ErrorCode, ServiceError
from core.images import photo_of
from core.jobs import JobRecords
from core.render import map_from_bytes, map_png
from core.validation import Manifests


def draw_map(
    records: JobRecords,
    registry: Manifests,
    job_id: str,
    owner: str | None,
    image: int,
    name: str,
    form: str,
    recolour: dict[str, Any],
) -> bytes | None:
    """The PNG of map ``name`` (``image/method/target``) of a succeeded job in ``form``, coloured as the
    job asked but for ``recolour`` (fields of :class:`RenderOptions`). None: no such map or form."""
    drawn_as = form + "".join(f";{key}={value}" for key, value in sorted(recolour.items()))
    source = records.map_source(job_id, owner, image, name, drawn_as)
    if source is None or form not in source.spec.outputs:
        return None
    if source.png is not None:
        return source.png
    try:
        options = RenderOptions.model_validate(source.spec.render.model_dump() | recolour)
    except ValidationError as error:  # the query's percentiles against the job's own
        names = {"clip_lower_percentile": "clip_lower_percentile", "scale": "scale_low"}
        field = next((query for key, query in names.items() if key in recolour), "clip_percentile")
        raise ServiceError(ErrorCode.invalid_parameter, error.errors()[0]["msg"], field) from None
    values = map_from_bytes(source.values)
    preprocessing = registry.manifest(source.spec.model).preprocessing
    if form == "overlay":
        if source.pixels is None:
            return None
        photo = photo_of(source.pixels, source.spec.image_sizes[image])
        png = map_png(values, options, photo=photo, preprocessing=preprocessing)
    else:
        png = map_png(values, options, photo_size=source.spec.image_sizes[image], preprocessing=preprocessing)
    records.keep_png(source, name, drawn_as, png)
    return png
