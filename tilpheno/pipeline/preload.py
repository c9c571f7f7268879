"""The ``--jobs N`` fork server's preload (``tilpheno.pipeline.pool.pool_context``): importing this
module imports the workers' libraries, :data:`tilpheno.pipeline.pool.PRELOAD`, with the cyclic
garbage collector paused and what they made frozen (:func:`tilpheno.pipeline.pool.import_libraries`),
and does the one-time work of a worker's first product (:func:`tilpheno.pipeline.product.warm_up`),
once, in the server, before it forks any worker."""
from __future__ import annotations

from tilpheno.pipeline.pool import import_libraries

import_libraries(warm_up=True)
