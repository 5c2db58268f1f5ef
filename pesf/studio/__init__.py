"""PESF Studio: the browser GUI of PESF, a trame-slicer application run by ``pesf studio``.

It drives the Slicer modules' Logic (``PESFSegmentLib``, ``PESFTrainLib``) on slicer-core and streams
Slicer's slice and 3D views to the page. Modules:

* :mod:`.compat`: what trame-slicer 2.0 needs and the slicer-core wheel lacks (import it first);
* :mod:`.scene`: trame-slicer's application, the views, volumes, clicks in slice views as RAS;
* :mod:`.segment_panel`, :mod:`.train_panel`: the page's organ and training panels over the Logic;
* :mod:`.ui`: the page; :mod:`.app`: the application, its state and actions;
* :mod:`.security`, :mod:`.downloads`, :mod:`.server`: access checks, exported files, serving.

Importing this package imports neither trame nor Slicer (the optional ``studio`` extra).
"""
