"""The paper's figures, rendered from the observations table and the fits (spec §7): ``python -m ctxscale.figures``.

:data:`FIGURES` names every figure with its drawing function, the experiments whose fits it draws and a caption
(``python -m ctxscale.figures --help`` lists them); the workflow makes a figure when those experiments are fitted.
The package's modules: :mod:`.registry` (the registry, as data: the workflow imports it at every parse, so
importing this package loads no plotting library), :mod:`.inputs` (settings and inputs), :mod:`.drawing` (style
and shared drawing helpers), :mod:`.plots` (one function per figure), :mod:`.render` (renders and saves them:
the step's ``main``).

Settings (``--settings``, the workflow config's ``figures`` section as JSON): ``formats`` (default png
and pdf), ``fig1_task``, ``fig1_model``, ``contour_n_ctx`` (paper: 8192), ``heldout_context_n_ctx``
(paper: 131072), and ``tasks``, the panel order, which the workflow sets to the order of the config's
``tasks`` mapping.

Choices where the paper is silent (spec §7 marks these layouts INFERRED):

- Axes: n_pmt and C on log scales, P linear. The fitted curves are drawn on a dense log grid with extra
  points at n_ctx, so the raw-token penalty appears as the cliff it is.
- n_ctx of the contour and held-out-context figures: the configured value when the data hold models with
  it; otherwise the nearest n_ctx present (in log distance) with a warning. Unconfigured, the contour uses
  the second-smallest n_ctx (the paper's 8k among 4k-128k: the first extended limit, so the cliff lies
  inside the observed prompts) and the held-out-context figure the largest (the paper's 128k).
- Fig. 1 default: the first task (``tasks`` setting, else the paper's order) and, among the models fitted at the
  contour n_ctx, the one with the most compute.
- Fig. 2 spans the observed compute range widened by a decade on each side, so the compute dependence of
  P^ is visible even though the paper's data hold only two compute levels.
- Held-out compute draws the held-out-compute fit's test rows; PI-vs-YaRN and the small multiples draw
  the in-distribution fit, and cells of models outside that fit are marked "held out".
- Held-out context draws a bootstrap band only when that fit was bootstrapped (``--bootstrap``).
- Which figures exist depends on the run: with no held-out-compute fits or no PI models, rendering
  everything skips those figures with a warning, while ``--only`` makes their absence an error.
- Fonts and sizes are set for a printed page (:func:`style`); PDF and PNG carry no creation date, so
  re-rendering the same inputs gives the same files.
"""
