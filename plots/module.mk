# plots: raster canvas + charts (stb_image_write, stb_truetype, DejaVu Sans), the router
# collapse detector shared with the trainer, run-log reading and the HTML report.
#   make report RUN=name        -> build/report runs/name
#   make report RUNS="a b"      -> build/report --compare runs/compare runs/a runs/b
MODULES += plots
plots_SRCS := plots/canvas.c plots/chart.c plots/collapse.c

TEST_PROGS += test_plots
test_plots_SRCS := tests/test_plots.c
test_plots_MODS := plots common
