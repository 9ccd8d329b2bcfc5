//! PNG plots (plotters, bitmap backend): SLO attainment vs request rate (one line per report)
//! and latency CDFs (TTFT, TPOT; one line per run).
//!
//! Text needs a TrueType font, loaded at run time (`--font`, `BATON_BENCH_FONT`, or DejaVu Sans /
//! Liberation Sans from the usual Debian paths). Without one the plots are drawn without any
//! text, and [`Fonts::warning`] says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::register_font;

use crate::report::{rate_text, Report};

#[derive(Debug, thiserror::Error)]
#[error("plotting {path}: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

/// Candidate font files, in order of preference.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Whether text can be drawn.
#[derive(Clone, Debug, PartialEq)]
pub enum Fonts {
    Loaded(PathBuf),
    Missing(String),
}

impl Fonts {
    pub fn text(&self) -> bool {
        matches!(self, Self::Loaded(_))
    }

    pub fn warning(&self) -> Option<String> {
        match self {
            Self::Loaded(_) => None,
            Self::Missing(why) => Some(format!(
                "no usable font ({why}); plots are drawn without text. Install fonts-dejavu-core \
                 or pass --font / BATON_BENCH_FONT"
            )),
        }
    }
}

static FONTS: OnceLock<Fonts> = OnceLock::new();

/// Registers a font for all later plots (once per process; later calls return the first result).
pub fn init_fonts(explicit: Option<&Path>) -> &'static Fonts {
    FONTS.get_or_init(|| load_font(explicit))
}

fn load_font(explicit: Option<&Path>) -> Fonts {
    let env = std::env::var_os("BATON_BENCH_FONT").map(PathBuf::from);
    let candidates: Vec<PathBuf> = match explicit.map(Path::to_path_buf).or(env) {
        Some(p) => vec![p],
        None => FONT_PATHS.iter().map(PathBuf::from).collect(),
    };
    let mut last = "none of the default font paths exist".to_owned();
    for path in candidates {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                match register_font("sans-serif", FontStyle::Normal, bytes) {
                    Ok(()) => return Fonts::Loaded(path),
                    Err(_) => last = format!("{} is not a usable TrueType font", path.display()),
                }
            }
            Err(e) => last = format!("{}: {e}", path.display()),
        }
    }
    Fonts::Missing(last)
}

/// Tableau 10: distinguishable lines on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    markers: bool,
}

struct Chart<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    series: Vec<Series>,
    /// A dashed horizontal reference line (the attainment target).
    hline: Option<f64>,
    y_max: f64,
}

/// Attainment (%) vs request rate, one line per report; infinite rates are left out.
pub fn attainment_vs_rate(reports: &[Report], target: f64, out: &Path) -> Result<(), PlotError> {
    let series = reports
        .iter()
        .map(|r| Series {
            name: r.label.clone(),
            points: r
                .runs
                .iter()
                .filter(|run| run.rate.is_finite())
                .filter_map(|run| Some((run.rate, run.summary.attainment? * 100.0)))
                .collect(),
            markers: true,
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    draw(
        &Chart {
            title: "SLO attainment vs request rate",
            x_desc: "request rate (req/s)",
            y_desc: "requests meeting all SLOs (%)",
            series,
            hline: Some(target * 100.0),
            y_max: 100.0,
        },
        out,
    )
}

/// Which latency a CDF shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Ttft,
    Tpot,
}

/// The CDF of TTFT or TPOT (ms) of every run that has records, one line per run.
pub fn latency_cdf(reports: &[Report], metric: Metric, out: &Path) -> Result<(), PlotError> {
    let mut series = Vec::new();
    for r in reports {
        for run in &r.runs {
            let mut ms: Vec<f64> = run
                .records
                .iter()
                .filter(|rec| rec.outcome.is_ok())
                .filter_map(|rec| match metric {
                    Metric::Ttft => rec.ttft_s,
                    Metric::Tpot => rec.tpot_s(),
                })
                .map(|s| s * 1000.0)
                .filter(|x| x.is_finite())
                .collect();
            if ms.is_empty() {
                continue;
            }
            ms.sort_by(f64::total_cmp);
            let n = ms.len() as f64;
            let points = ms
                .iter()
                .enumerate()
                .map(|(i, &x)| (x, (i + 1) as f64 / n))
                .collect();
            let name = if r.runs.len() > 1 {
                format!("{} @ {} req/s", r.label, rate_text(run.rate))
            } else {
                r.label.clone()
            };
            series.push(Series {
                name,
                points,
                markers: false,
            });
        }
    }
    let (title, x_desc) = match metric {
        Metric::Ttft => ("TTFT CDF", "time to first token (ms)"),
        Metric::Tpot => ("TPOT CDF", "time per output token (ms)"),
    };
    draw(
        &Chart {
            title,
            x_desc,
            y_desc: "fraction of completed requests",
            series,
            hline: None,
            y_max: 1.0,
        },
        out,
    )
}

fn draw(chart: &Chart<'_>, out: &Path) -> Result<(), PlotError> {
    let text = init_fonts(None).text();
    draw_inner(chart, out, text).map_err(|message| PlotError {
        path: out.display().to_string(),
        message,
    })
}

fn draw_inner(c: &Chart<'_>, out: &Path, text: bool) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let x_max = c
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0_f64, f64::max);
    let x_max = if x_max > 0.0 { x_max * 1.05 } else { 1.0 };
    let root = BitMapBackend::new(out, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(24);
    if text {
        builder
            .caption(c.title, ("sans-serif", 26))
            .x_label_area_size(48)
            .y_label_area_size(64);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..x_max, 0.0..c.y_max * 1.02)
        .map_err(|x| e(&x))?;
    if text {
        chart
            .configure_mesh()
            .x_desc(c.x_desc)
            .y_desc(c.y_desc)
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(|x| e(&x))?;
    } else {
        // No label areas: the grid (10% steps) and a frame, no tick labels.
        chart
            .configure_mesh()
            .x_labels(11)
            .y_labels(11)
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .plotting_area()
            .draw(&Rectangle::new(
                [(0.0, 0.0), (x_max, c.y_max * 1.02)],
                BLACK.stroke_width(1),
            ))
            .map_err(|x| e(&x))?;
    }
    if let Some(y) = c.hline {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, y), (x_max, y)],
                8,
                6,
                BLACK.mix(0.6).stroke_width(1),
            ))
            .map_err(|x| e(&x))?;
    }
    for (i, s) in c.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let drawn = chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?;
        if text {
            drawn.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        if s.markers {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|x| e(&x))?;
        }
    }
    if text && !c.series.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
