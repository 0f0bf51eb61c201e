"""Teaching props for the notebooks: the classic cache bugs, deliberately broken (`bugs`); K/V capture and
position counting (`trace`); the step-through grids (`stepgrid`) and their ipywidgets (`widgets`); the block-table
view of the serving engine (`block_view`); and the notebooks' figures (`plotting`).

May import: everything else in kvlib (the library, kvlib.shakespeare, kvlib.measure). Nothing imports it but the
notebooks and the tests.
"""
