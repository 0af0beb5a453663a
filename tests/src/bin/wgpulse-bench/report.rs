//! The bench report: each part's rows (a value, its unit, a ratio measured in the
//! same run, a target and whether it is met), written as `target/bench/<part>.json`
//! and assembled into `report.json`, `report.md` and SVG plots.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Median of samples (the middle one; the upper middle for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    assert!(!values.is_empty(), "no samples");
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// The `p`-th percentile (0..=100) by nearest rank.
pub fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    assert!(!values.is_empty(), "no samples");
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * values.len() as f64).ceil().max(1.0) as usize;
    values[rank.min(values.len()) - 1]
}

/// One figure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// What was measured.
    pub case: String,
    /// The figure (a median unless the case says otherwise).
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// A ratio measured in the same run, if any.
    pub ratio: Option<f64>,
    /// What the ratio is relative to.
    pub ratio_of: Option<String>,
    /// The target, if the issue sets one.
    pub target: Option<String>,
    /// Whether it is met.
    pub met: Option<bool>,
}

impl Row {
    /// A figure.
    pub fn new(case: &str, value: f64, unit: &str) -> Self {
        Self {
            case: case.into(),
            value,
            unit: unit.into(),
            ratio: None,
            ratio_of: None,
            target: None,
            met: None,
        }
    }

    /// With a ratio.
    pub fn ratio(mut self, ratio: f64, of: &str) -> Self {
        self.ratio = Some(ratio);
        self.ratio_of = Some(of.into());
        self
    }

    /// With a target.
    pub fn target(mut self, target: &str, met: bool) -> Self {
        self.target = Some(target.into());
        self.met = Some(met);
        self
    }

    /// With a target the run cannot judge (`met` stays `None`; `target` says why).
    pub fn undecided(mut self, target: &str) -> Self {
        self.target = Some(target.into());
        self.met = None;
        self
    }
}

/// A series of points for a plot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    /// Legend.
    pub name: String,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// A plot of a part.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plot {
    /// File name (`<name>.svg`).
    pub name: String,
    /// Title.
    pub title: String,
    /// X axis label.
    pub x: String,
    /// Y axis label.
    pub y: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// The series.
    pub series: Vec<Series>,
}

/// One part of the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Part {
    /// Key (`datapath`, `tunnel`, ...).
    pub key: String,
    /// Title.
    pub title: String,
    /// How it was measured.
    pub method: String,
    /// Figures.
    pub rows: Vec<Row>,
    /// Plots.
    pub plots: Vec<Plot>,
    /// Whether this is the reduced (--quick) version.
    pub quick: bool,
}

impl Part {
    /// An empty part.
    pub fn new(key: &str, title: &str, method: &str) -> Self {
        Self {
            key: key.into(),
            title: title.into(),
            method: method.into(),
            rows: Vec::new(),
            plots: Vec::new(),
            quick: false,
        }
    }

    /// The terminal table.
    pub fn print(&self) {
        println!("\n{} ({})", self.title, self.method);
        println!(
            "{:<48} {:>14} {:<12} {:>10} target",
            "case", "value", "unit", "ratio"
        );
        for row in &self.rows {
            let ratio = row.ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
            let target = match (&row.target, row.met) {
                (Some(t), Some(true)) => format!("{t}: met"),
                (Some(t), Some(false)) => format!("{t}: NOT met"),
                (Some(t), None) => format!("{t}: not judged"),
                _ => String::new(),
            };
            println!(
                "{:<48} {:>14.2} {:<12} {:>10} {}",
                row.case, row.value, row.unit, ratio, target
            );
        }
    }
}

/// Where the report goes: `target/bench`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench")
}

/// Saves a part as `target/bench/<key>.json`.
pub fn save(part: &Part) {
    std::fs::create_dir_all(dir()).unwrap();
    let path = dir().join(format!("{}.json", part.key));
    std::fs::write(&path, serde_json::to_vec_pretty(part).unwrap()).unwrap();
}

/// Draws a plot as SVG.
fn draw(plot: &Plot, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let xs = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let y_max = ys.fold(0.0f64, f64::max) * 1.1 + f64::EPSILON;
    let palette = [&BLUE, &RED, &GREEN, &MAGENTA];
    if plot.log_x {
        let mut chart = ChartBuilder::on(&root)
            .caption(&plot.title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_min.max(1.0)..x_max).log_scale(), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc(&plot.x)
            .y_desc(&plot.y)
            .draw()?;
        for (i, series) in plot.series.iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(series.points.iter().copied(), color))?
                .label(&series.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(
                series
                    .points
                    .iter()
                    .map(|p| Circle::new(*p, 3, color.filled())),
            )?;
        }
        chart.configure_series_labels().border_style(BLACK).draw()?;
    } else {
        let mut chart = ChartBuilder::on(&root)
            .caption(&plot.title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x_min..x_max.max(x_min + 1.0), 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc(&plot.x)
            .y_desc(&plot.y)
            .draw()?;
        for (i, series) in plot.series.iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(LineSeries::new(series.points.iter().copied(), color))?
                .label(&series.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart.configure_series_labels().border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

/// Assembles every saved part into `report.json`, `report.md` and the plots.
pub fn assemble(machine: &str) {
    let mut parts: Vec<Part> = std::fs::read_dir(dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && p.file_stem().is_some_and(|s| s != "report")
                })
                .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    let order = [
        "datapath",
        "tunnel",
        "connect",
        "drain",
        "scrape",
        "delivery",
        "footprint",
    ];
    parts.sort_by_key(|p| order.iter().position(|k| *k == p.key).unwrap_or(99));
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let report = serde_json::json!({"date": date, "machine": machine, "parts": parts});
    std::fs::write(
        dir().join("report.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    let mut md = format!("# wgpulse benchmark report\n\n{date}, {machine}.\n\nEvery figure is a median over repeated runs unless it says p99; every ratio was measured in the same run.\n");
    for part in &parts {
        md.push_str(&format!("\n## {}{}\n\n{}\n\n| case | value | unit | ratio | target |\n| --- | ---: | --- | ---: | --- |\n", part.title, if part.quick { " (quick)" } else { "" }, part.method));
        for row in &part.rows {
            let ratio = match (row.ratio, &row.ratio_of) {
                (Some(r), Some(of)) => format!("{r:.3} {of}"),
                _ => String::new(),
            };
            let target = match (&row.target, row.met) {
                (Some(t), Some(true)) => format!("{t}: met"),
                (Some(t), Some(false)) => format!("{t}: **not met**"),
                (Some(t), None) => format!("{t}: not judged"),
                _ => String::new(),
            };
            md.push_str(&format!(
                "| {} | {:.2} | {} | {} | {} |\n",
                row.case, row.value, row.unit, ratio, target
            ));
        }
        for plot in &part.plots {
            let file = format!("{}.svg", plot.name);
            match draw(plot, &dir().join(&file)) {
                Ok(()) => md.push_str(&format!("\n![{}]({file})\n", plot.title)),
                Err(err) => md.push_str(&format!("\n(plot {file} failed: {err})\n")),
            }
        }
    }
    std::fs::write(dir().join("report.md"), md).unwrap();
    println!("\nreport: {}", dir().join("report.md").display());
}
