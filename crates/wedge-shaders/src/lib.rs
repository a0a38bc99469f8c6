//! wedge-shaders: the kernel library.
//!
//! It owns every `.wgsl` file in `shaders/` (one per kernel family, each valid
//! WGSL as stored), expands their templates with a small checked substitution,
//! and names every variant with a [`KernelKey`] that also labels the GPU objects
//! built from it. Scalar knobs travel as pipeline-overridable constants, shape
//! parameters (workgroup and tile sizes) as template values.
//!
//! It must not depend on a GPU API: keys, sources and binding tables are plain
//! data, and a test validates every registered variant with naga, without a GPU.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

use std::fmt;

use thiserror::Error;

/// Errors from template expansion.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShaderError {
    /// A template value was given for a name the file does not declare as a template.
    #[error("{file}: `{key}` is not a template parameter (known: {known})")]
    UnknownKey {
        /// Shader file.
        file: &'static str,
        /// The offending key.
        key: String,
        /// Declared template keys.
        known: String,
    },
    /// An entry point the family does not have.
    #[error("{file}: no entry point `{entry}`")]
    UnknownEntry {
        /// Shader file.
        file: &'static str,
        /// The requested entry.
        entry: String,
    },
}

/// A kernel family: one `.wgsl` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Family {
    /// `qweight.wgsl`: gemv, gemm, gather over packed weights.
    QWeight,
    /// `qweight_subgroup.wgsl` appended to `qweight.wgsl`: the GEMV with subgroup
    /// reductions, built only on devices with subgroup operations.
    QWeightSubgroup,
    /// `qweight_a8.wgsl` appended to `qweight.wgsl`: `q8a8` matmuls (8-bit activations,
    /// `dot4I8Packed`).
    QWeightA8,
    /// `qweight_f16.wgsl` appended to `qweight.wgsl`, `enable f16;` in front: the tiled GEMM
    /// with f16 tiles and f16 sums of each reduction chunk, built only on devices with
    /// `shader-f16`.
    QWeightF16,
    /// `elementwise.wgsl`: binary ops and activations.
    Elementwise,
    /// `rows.wgsl`: layernorm, rmsnorm, softmax, l2 normalize.
    Rows,
    /// `attention.wgsl` with `softmax.wgsl` after it: fused attention.
    Attention,
    /// `misc.wgsl`: rope, mean pooling, transpose.
    Misc,
    /// `cache.wgsl` with `softmax.wgsl` after it: key/value cache writes, attention over
    /// caches, row selection.
    Cache,
}

/// How a binding is declared in WGSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<storage, read>`
    StorageRead,
    /// `var<storage, read_write>`
    StorageReadWrite,
    /// `var<uniform>`
    Uniform,
}

use BindingKind::{StorageRead as R, StorageReadWrite as W, Uniform as U};

impl Family {
    /// Every family.
    pub const ALL: [Family; 9] = [
        Family::QWeight,
        Family::QWeightSubgroup,
        Family::QWeightA8,
        Family::QWeightF16,
        Family::Elementwise,
        Family::Rows,
        Family::Attention,
        Family::Misc,
        Family::Cache,
    ];

    /// The file name under `shaders/`.
    pub fn file(self) -> &'static str {
        match self {
            Family::QWeight => "qweight.wgsl",
            Family::QWeightSubgroup => "qweight_subgroup.wgsl",
            Family::QWeightA8 => "qweight_a8.wgsl",
            Family::QWeightF16 => "qweight_f16.wgsl",
            Family::Elementwise => "elementwise.wgsl",
            Family::Rows => "rows.wgsl",
            Family::Attention => "attention.wgsl",
            Family::Misc => "misc.wgsl",
            Family::Cache => "cache.wgsl",
        }
    }

    /// The WGSL source as stored (for [`Family::QWeightSubgroup`], [`Family::QWeightA8`] and
    /// [`Family::QWeightF16`]: `qweight.wgsl` with the family's file after it; for the last,
    /// `enable f16;` in front, which naga and browsers both want).
    pub fn source(self) -> &'static str {
        match self {
            Family::QWeight => include_str!("../../../shaders/qweight.wgsl"),
            Family::QWeightSubgroup => {
                concat!(
                    include_str!("../../../shaders/qweight.wgsl"),
                    include_str!("../../../shaders/qweight_subgroup.wgsl")
                )
            }
            Family::QWeightA8 => {
                concat!(include_str!("../../../shaders/qweight.wgsl"), include_str!("../../../shaders/qweight_a8.wgsl"))
            }
            Family::QWeightF16 => concat!(
                "enable f16;\n",
                include_str!("../../../shaders/qweight.wgsl"),
                include_str!("../../../shaders/qweight_f16.wgsl")
            ),
            Family::Elementwise => include_str!("../../../shaders/elementwise.wgsl"),
            Family::Rows => include_str!("../../../shaders/rows.wgsl"),
            Family::Attention => {
                concat!(include_str!("../../../shaders/attention.wgsl"), include_str!("../../../shaders/softmax.wgsl"))
            }
            Family::Misc => include_str!("../../../shaders/misc.wgsl"),
            Family::Cache => {
                concat!(include_str!("../../../shaders/cache.wgsl"), include_str!("../../../shaders/softmax.wgsl"))
            }
        }
    }

    /// Entry points.
    pub fn entries(self) -> &'static [&'static str] {
        match self {
            Family::QWeight => &["gemv", "gemm", "gather"],
            Family::QWeightSubgroup => &["gemv_sg"],
            Family::QWeightA8 => &["gemv_a8", "gemm_a8"],
            Family::QWeightF16 => &["gemm_h"],
            Family::Elementwise => &["binary", "activation"],
            Family::Rows => &["layernorm", "rmsnorm", "softmax", "l2_normalize"],
            Family::Attention => &["attention"],
            Family::Misc => &["rope", "mean_pool", "transpose"],
            Family::Cache => &["cache_write", "cached_attention", "select_rows"],
        }
    }

    /// The family's bindings in group 0, by binding index. Every entry point of a family
    /// shares one layout, so a dispatch binds them all.
    pub fn bindings(self) -> &'static [BindingKind] {
        match self {
            Family::QWeight | Family::QWeightSubgroup | Family::QWeightA8 | Family::QWeightF16 => {
                &[R, R, R, R, W, U, R]
            }
            Family::Elementwise => &[R, R, W, U],
            Family::Rows => &[R, R, R, W, U],
            Family::Attention => &[R, R, R, R, W, U],
            Family::Misc => &[R, R, R, W, U],
            Family::Cache => &[R, R, R, W, R, W, U],
        }
    }

    /// Override constants the family declares, with the values each may take.
    pub fn overrides(self) -> &'static [(&'static str, &'static [f64])] {
        match self {
            Family::QWeight | Family::QWeightSubgroup => &[
                ("WTYPE", &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]),
                ("ACT", &[0.0, 1.0, 2.0, 3.0, 4.0]),
                ("HAS_BIAS", &[0.0, 1.0]),
            ],
            Family::QWeightA8 => &[("WTYPE", &[5.0]), ("ACT", &[0.0, 1.0, 2.0, 3.0, 4.0]), ("HAS_BIAS", &[0.0, 1.0])],
            // q8a8 keeps its integer GEMM
            Family::QWeightF16 => &[
                ("WTYPE", &[0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]),
                ("ACT", &[0.0, 1.0, 2.0, 3.0, 4.0]),
                ("HAS_BIAS", &[0.0, 1.0]),
            ],
            Family::Elementwise => &[("OP", &[0.0, 1.0]), ("ACT", &[0.0, 1.0, 2.0, 3.0, 4.0])],
            Family::Cache => &[("HALF", &[0.0, 1.0])],
            _ => &[],
        }
    }

    /// WGSL extensions the family's source uses. Each needs a device feature
    /// ([`Family::features`]). A browser (Tint) wants an `enable` directive for each; naga
    /// 30 wants `enable f16;` (so [`Family::source`] has it) but rejects
    /// `enable subgroups;`, so [`KernelKey::source_with_enables`] writes the rest.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Family::QWeightSubgroup => &["subgroups"],
            Family::QWeightF16 => &["f16"],
            _ => &[],
        }
    }

    /// The WebGPU device features the family needs, one per [`Family::extensions`] entry.
    pub fn features(self) -> Vec<&'static str> {
        self.extensions().iter().map(|&e| if e == "f16" { "shader-f16" } else { e }).collect()
    }

    /// Template values the backends use for this family (each set is one variant).
    pub fn template_sets(self) -> Vec<Vec<(&'static str, u32)>> {
        match self {
            Family::QWeight => {
                let mut v = Vec::new();
                for (wg, tpr, ts) in [(64, 1, 16), (256, 32, 16), (64, 8, 8), (128, 32, 16)] {
                    v.push(vec![("WG", wg), ("TPR", tpr), ("TS", ts)]);
                }
                v
            }
            Family::QWeightSubgroup => vec![vec![("WG", 64)], vec![("WG", 256)]],
            Family::QWeightF16 => vec![vec![("TS", 16)], vec![("TS", 8)]],
            // the GEMV's reduction tree holds WG × 64 bytes: 64 keeps it to 4 KiB
            Family::QWeightA8 => vec![vec![("WG", 64), ("TS", 16)], vec![("WG", 64), ("TS", 8)]],
            Family::Attention | Family::Cache => vec![vec![("WG", 64)], vec![("WG", 128)]],
            _ => vec![vec![("WG", 64)], vec![("WG", 256)]],
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file().trim_end_matches(".wgsl"))
    }
}

/// Names one compiled kernel variant: family, entry point, template values and
/// override constants. Keys the pipeline cache and labels GPU objects.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelKey {
    /// Family (file).
    pub family: Family,
    /// Entry point.
    pub entry: &'static str,
    /// Template values, sorted by name.
    pub template: Vec<(&'static str, u32)>,
    /// Override constants, sorted by name.
    pub overrides: Vec<(&'static str, f64)>,
}

impl Eq for KernelKey {}

impl std::hash::Hash for KernelKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.family.hash(state);
        self.entry.hash(state);
        self.template.hash(state);
        for (k, v) in &self.overrides {
            k.hash(state);
            v.to_bits().hash(state);
        }
    }
}

impl KernelKey {
    /// A key with template values and overrides (both get sorted).
    pub fn new(
        family: Family,
        entry: &'static str,
        mut template: Vec<(&'static str, u32)>,
        mut overrides: Vec<(&'static str, f64)>,
    ) -> KernelKey {
        template.sort_by_key(|(k, _)| *k);
        overrides.sort_by(|a, b| a.0.cmp(b.0));
        KernelKey { family, entry, template, overrides }
    }

    /// `family.entry[WG=64,TPR=1]{WTYPE=3,ACT=1}`
    pub fn label(&self) -> String {
        self.to_string()
    }

    /// The expanded WGSL source for this key's template values, as naga takes it.
    pub fn source(&self) -> Result<String, ShaderError> {
        if !self.family.entries().contains(&self.entry) {
            return Err(ShaderError::UnknownEntry { file: self.family.file(), entry: self.entry.into() });
        }
        expand(self.family.file(), self.family.source(), &self.template)
    }

    /// [`KernelKey::source`] with an `enable` directive in front for each of the family's
    /// [`Family::extensions`]: what a browser's WGSL compiler (Tint) wants. naga 30 rejects
    /// `enable subgroups;`, so native backends use [`KernelKey::source`].
    pub fn source_with_enables(&self) -> Result<String, ShaderError> {
        let body = self.source()?;
        let mut src: String = self
            .family
            .extensions()
            .iter()
            .map(|e| format!("enable {e};\n"))
            // (a family's source may carry its directive already: naga wants `enable f16;`)
            .filter(|directive| !body.lines().any(|l| l.trim() == directive.trim()))
            .collect();
        src.push_str(&body);
        Ok(src)
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.family, self.entry)?;
        if !self.template.is_empty() {
            let t: Vec<String> = self.template.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, "[{}]", t.join(","))?;
        }
        if !self.overrides.is_empty() {
            let o: Vec<String> = self.overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, "{{{}}}", o.join(","))?;
        }
        Ok(())
    }
}

/// Template parameters a source declares: lines `const NAME: u32 = <value>u; // template...`.
pub fn template_keys(src: &str) -> Vec<&str> {
    src.lines().filter_map(|l| parse_template_line(l).map(|(name, _, _)| name)).collect()
}

/// Splits a template line `const NAME: u32 = 64u; // template ...` into
/// (name, text up to and including `=`, text from `;` on).
fn parse_template_line(line: &str) -> Option<(&str, &str, &str)> {
    let (code, comment) = line.split_once("//")?;
    if !comment.trim_start().starts_with("template") {
        return None;
    }
    let rest = code.trim_start().strip_prefix("const ")?;
    let (name, _) = rest.split_once(':')?;
    let eq = line.find('=')?;
    let semi = eq + line[eq..].find(';')?;
    Some((name.trim(), &line[..=eq], &line[semi..]))
}

/// Replaces the values of template constants. Every key must be declared as a template
/// in `src`; keys not given keep the value stored in the file.
pub fn expand(file: &'static str, src: &str, values: &[(&str, u32)]) -> Result<String, ShaderError> {
    let known = template_keys(src);
    for (k, _) in values {
        if !known.contains(k) {
            return Err(ShaderError::UnknownKey { file, key: (*k).to_string(), known: known.join(", ") });
        }
    }
    let mut out = String::with_capacity(src.len() + 64);
    for line in src.lines() {
        match parse_template_line(line) {
            Some((name, lead, tail)) => match values.iter().find(|(k, _)| *k == name) {
                Some((_, v)) => {
                    out.push_str(lead);
                    out.push(' ');
                    out.push_str(&format!("{v}u"));
                    out.push_str(tail);
                }
                None => out.push_str(line),
            },
            None => out.push_str(line),
        }
        out.push('\n');
    }
    Ok(out)
}

/// Every variant the backends may build: each family × entry × template set × override combination.
pub fn all_variants() -> Vec<KernelKey> {
    let mut keys = Vec::new();
    for family in Family::ALL {
        let mut combos: Vec<Vec<(&'static str, f64)>> = vec![Vec::new()];
        for (name, vals) in family.overrides() {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    vals.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((*name, *v));
                        c
                    })
                })
                .collect();
        }
        for t in family.template_sets() {
            for entry in family.entries() {
                for o in &combos {
                    keys.push(KernelKey::new(family, entry, t.clone(), o.clone()));
                }
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_replaces_only_declared_templates() {
        let src = Family::QWeight.source();
        assert_eq!(template_keys(src), vec!["WG", "TPR", "TS"]);
        let out = expand("qweight.wgsl", src, &[("WG", 256), ("TS", 8)]).unwrap();
        assert!(out.contains("const WG: u32 = 256u; // template"), "{out}");
        assert!(out.contains("const TS: u32 = 8u; // template"));
        assert!(out.contains("const TPR: u32 = 1u; // template"));
        let err = expand("qweight.wgsl", src, &[("MAXM", 8)]).unwrap_err();
        assert!(matches!(err, ShaderError::UnknownKey { .. }), "{err}");
    }

    #[test]
    fn enable_directives_come_first_and_once() {
        let f16 = KernelKey::new(Family::QWeightF16, "gemm_h", vec![("TS", 8)], vec![]);
        for src in [f16.source().unwrap(), f16.source_with_enables().unwrap()] {
            assert!(src.starts_with("enable f16;\n"));
            assert_eq!(src.lines().filter(|l| l.trim() == "enable f16;").count(), 1);
        }
        let sg = KernelKey::new(Family::QWeightSubgroup, "gemv_sg", vec![("WG", 64)], vec![]);
        assert!(sg.source_with_enables().unwrap().starts_with("enable subgroups;\n"));
        assert!(!sg.source().unwrap().lines().any(|l| l.trim() == "enable subgroups;"));
        assert_eq!(Family::QWeightF16.features(), vec!["shader-f16"]);
    }

    #[test]
    fn labels_are_stable() {
        let k = KernelKey::new(Family::QWeight, "gemv", vec![("WG", 64)], vec![("WTYPE", 3.0), ("ACT", 1.0)]);
        assert_eq!(k.label(), "qweight.gemv[WG=64]{ACT=1,WTYPE=3}");
        let bad = KernelKey::new(Family::Rows, "gemv", vec![], vec![]);
        assert!(bad.source().is_err());
    }
}
