# plots: raster canvas + charts (stb_image_write, stb_truetype, DejaVu Sans), the router
# collapse detector shared with the trainer, run-log reading and the HTML report.
# Command lines for the top Makefile (the `report:` target is not defined here):
#   make report RUN=name     ->  $(BUILD)/report runs/name
#   make report RUNS="a b"   ->  $(BUILD)/report --compare runs/compare runs/a runs/b
MODULES += plots
plots_SRCS := plots/canvas.c plots/chart.c plots/collapse.c plots/runlog.c plots/report.c plots/report_html.c

PROGRAMS += report
report_SRCS := plots/report_main.c
report_MODS := plots common

TEST_PROGS += test_plots
test_plots_SRCS := tests/test_plots.c
test_plots_MODS := plots common

SHELL_TESTS += tests/test_report_cli.sh tests/test_report_html.sh
