//! Param resolution: the value a machine sees for each param, and where it came from.
//!
//! Lookup order, first found wins:
//! 1. the machine's own `params`;
//! 2. the machine's `profiles` in order, each profile's own params before its nested profiles
//!    (depth-first);
//! 3. the [`GLOBAL_PROFILE`] and its nested profiles, the same way;
//! 4. the param definition's `default`.
//!
//! A profile reached twice (a cycle, or a diamond) is consulted only the first time: a second
//! visit could not contribute anything the first did not, and skipping it ends cycles. Nesting
//! deeper than [`MAX_PROFILE_DEPTH`] is not followed, and a profile that does not exist is skipped
//! (deleting a profile must not make every machine that names it unbootable) and reported in
//! [`Resolution::missing_profiles`]. Lookups are fallible: a storage error ends resolution with
//! that error instead of being taken for "no such profile". Secure values are returned as-is:
//! redaction is the API's decision, made per caller.
//!
//! The store's `View::effective_params` runs this over one consistent view of the state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::machine::Machine;
use super::param::Param;
use super::profile::{Profile, GLOBAL_PROFILE};

/// How deep profile nesting is followed; the machine's own profiles are depth 1.
pub const MAX_PROFILE_DEPTH: usize = 16;

/// Where an effective value came from, so operators know which object to edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParamSource {
    Machine,
    /// A profile the machine names, or one nested under it or under the global profile.
    Profile {
        name: String,
    },
    /// The global profile itself.
    Global,
    /// The param definition's default.
    Default,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EffectiveParam {
    pub value: Value,
    pub source: ParamSource,
}

/// A machine's resolved params, and what resolution could not find.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolution {
    /// Every param with a value, by name.
    pub params: BTreeMap<String, EffectiveParam>,
    /// Profiles named along the lookup chain that do not exist. Resolution goes on without them
    /// (see the module doc); callers decide whether that matters (a renderer may refuse to
    /// render, the API shows what resolved).
    pub missing_profiles: Vec<String>,
}

/// The param maps to consult, in lookup order, and the profiles that were named but not found.
type Chain = (Vec<(ParamSource, BTreeMap<String, Value>)>, Vec<String>);

fn chain<E>(
    machine: &Machine,
    profiles: &dyn Fn(&str) -> Result<Option<Profile>, E>,
) -> Result<Chain, E> {
    let mut out = vec![(ParamSource::Machine, machine.params.clone())];
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for name in &machine.profiles {
        walk(name, 1, profiles, &mut seen, &mut out, &mut missing)?;
    }
    walk(
        GLOBAL_PROFILE,
        1,
        profiles,
        &mut seen,
        &mut out,
        &mut missing,
    )?;
    Ok((out, missing))
}

fn walk<E>(
    name: &str,
    depth: usize,
    profiles: &dyn Fn(&str) -> Result<Option<Profile>, E>,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<(ParamSource, BTreeMap<String, Value>)>,
    missing: &mut Vec<String>,
) -> Result<(), E> {
    if depth > MAX_PROFILE_DEPTH || !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some(profile) = profiles(name)? else {
        missing.push(name.to_string());
        return Ok(());
    };
    let source = if name == GLOBAL_PROFILE {
        ParamSource::Global
    } else {
        ParamSource::Profile {
            name: name.to_string(),
        }
    };
    out.push((source, profile.params));
    for nested in &profile.profiles {
        walk(nested, depth + 1, profiles, seen, out, missing)?;
    }
    Ok(())
}

/// Every param with a value for `machine`: all names set anywhere along its lookup chain, plus
/// every name in `param_names` (the defined params) that has a default.
///
/// `profiles` and `param_defs` answer `Ok(None)` for what does not exist; an `Err` from either
/// (a storage error) ends resolution with that error: a value is never guessed.
pub fn effective_params<E, S: AsRef<str>>(
    machine: &Machine,
    profiles: &dyn Fn(&str) -> Result<Option<Profile>, E>,
    param_defs: &dyn Fn(&str) -> Result<Option<Param>, E>,
    param_names: impl IntoIterator<Item = S>,
) -> Result<Resolution, E> {
    let (chain, missing_profiles) = chain(machine, profiles)?;
    let mut out = BTreeMap::new();
    for (source, params) in chain {
        for (name, value) in params {
            out.entry(name).or_insert_with(|| EffectiveParam {
                value,
                source: source.clone(),
            });
        }
    }
    for name in param_names {
        let name = name.as_ref();
        if out.contains_key(name) {
            continue;
        }
        if let Some(value) = param_defs(name)?.and_then(|d| d.default) {
            out.insert(
                name.to_string(),
                EffectiveParam {
                    value,
                    source: ParamSource::Default,
                },
            );
        }
    }
    Ok(Resolution {
        params: out,
        missing_profiles,
    })
}

/// The effective value of one param for `machine`, as [`effective_params`] would give it.
pub fn lookup_param<E>(
    machine: &Machine,
    profiles: &dyn Fn(&str) -> Result<Option<Profile>, E>,
    param_defs: &dyn Fn(&str) -> Result<Option<Param>, E>,
    name: &str,
) -> Result<Option<EffectiveParam>, E> {
    if let Some(value) = machine.params.get(name) {
        // The common case for per-machine params, without fetching any profile.
        return Ok(Some(EffectiveParam {
            value: value.clone(),
            source: ParamSource::Machine,
        }));
    }
    for (source, mut params) in chain(machine, profiles)?.0 {
        if let Some(value) = params.remove(name) {
            return Ok(Some(EffectiveParam { value, source }));
        }
    }
    Ok(param_defs(name)?
        .and_then(|d| d.default)
        .map(|value| EffectiveParam {
            value,
            source: ParamSource::Default,
        }))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use serde_json::json;

    use super::*;

    fn profile(name: &str, params: Value, nested: &[&str]) -> Profile {
        Profile {
            name: name.into(),
            params: serde_json::from_value(params).unwrap(),
            profiles: nested.iter().map(|s| s.to_string()).collect(),
            ..Profile::default()
        }
    }

    fn param(name: &str, default: Option<Value>) -> Param {
        Param {
            name: name.into(),
            default,
            ..Param::default()
        }
    }

    fn src(name: &str) -> ParamSource {
        ParamSource::Profile { name: name.into() }
    }

    /// One check for resolution: given the world, each expected `(name, value, source)` must come
    /// out of both `effective_params` (exactly these, nothing more) and `lookup_param`.
    fn check(
        machine: &Machine,
        world: &[Profile],
        defs: &[Param],
        expected: &[(&str, Value, ParamSource)],
    ) {
        let profiles = |n: &str| Ok::<_, Infallible>(world.iter().find(|p| p.name == n).cloned());
        let param_defs = |n: &str| Ok::<_, Infallible>(defs.iter().find(|p| p.name == n).cloned());
        let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        let got = effective_params(machine, &profiles, &param_defs, names)
            .unwrap()
            .params;
        let want: BTreeMap<String, EffectiveParam> = expected
            .iter()
            .map(|(n, v, s)| {
                (
                    n.to_string(),
                    EffectiveParam {
                        value: v.clone(),
                        source: s.clone(),
                    },
                )
            })
            .collect();
        assert_eq!(got, want);
        for (name, value) in &want {
            assert_eq!(
                lookup_param(machine, &profiles, &param_defs, name)
                    .unwrap()
                    .as_ref(),
                Some(value),
                "lookup of {name}"
            );
        }
        assert_eq!(
            lookup_param(machine, &profiles, &param_defs, "never-set").unwrap(),
            None
        );
    }

    fn machine(params: Value, profiles: &[&str]) -> Machine {
        Machine {
            name: "m".into(),
            params: serde_json::from_value(params).unwrap(),
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            ..Machine::default()
        }
    }

    #[test]
    fn machine_then_profiles_then_global_then_default() {
        let world = [
            profile("a", json!({"p1": "a", "p2": "a", "p3": "a"}), &[]),
            profile("b", json!({"p2": "b", "p4": "b"}), &[]),
            profile(
                GLOBAL_PROFILE,
                json!({"p3": "g", "p4": "g", "p5": "g"}),
                &[],
            ),
        ];
        let defs = [
            param("p5", Some(json!("d"))),
            param("p6", Some(json!(6))),
            param("p7", None),
        ];
        check(
            &machine(json!({"p1": "m"}), &["a", "b"]),
            &world,
            &defs,
            &[
                ("p1", json!("m"), ParamSource::Machine),
                ("p2", json!("a"), src("a")),
                ("p3", json!("a"), src("a")),
                ("p4", json!("b"), src("b")),
                ("p5", json!("g"), ParamSource::Global),
                ("p6", json!(6), ParamSource::Default),
            ],
        );
    }

    #[test]
    fn nested_profiles_are_depth_first_own_params_first() {
        // m → [a, c]; a → [b]. Order: a, b, c. a's own params beat b's; b's beat c's.
        let world = [
            profile("a", json!({"x": "a"}), &["b"]),
            profile("b", json!({"x": "b", "y": "b"}), &[]),
            profile("c", json!({"y": "c", "z": "c"}), &[]),
        ];
        check(
            &machine(json!({}), &["a", "c"]),
            &world,
            &[],
            &[
                ("x", json!("a"), src("a")),
                ("y", json!("b"), src("b")),
                ("z", json!("c"), src("c")),
            ],
        );
    }

    #[test]
    fn global_nested_profiles_come_after_global_itself() {
        let world = [
            profile(GLOBAL_PROFILE, json!({"x": "g"}), &["site"]),
            profile("site", json!({"x": "s", "y": "s"}), &[]),
        ];
        check(
            &machine(json!({}), &[]),
            &world,
            &[],
            &[
                ("x", json!("g"), ParamSource::Global),
                ("y", json!("s"), src("site")),
            ],
        );
    }

    #[test]
    fn cycles_missing_profiles_and_depth_are_survived() {
        // a → b → a (cycle), a → missing; global is listed by the machine too.
        let world = [
            profile("a", json!({"x": "a"}), &["b", "missing"]),
            profile("b", json!({"x": "b", "y": "b"}), &["a"]),
            profile(GLOBAL_PROFILE, json!({"g": 1}), &["a"]),
        ];
        check(
            &machine(json!({}), &["b", GLOBAL_PROFILE, "nope"]),
            &world,
            &[],
            &[
                ("x", json!("b"), src("b")),
                ("y", json!("b"), src("b")),
                ("g", json!(1), ParamSource::Global),
            ],
        );

        // A chain deeper than the limit: level i sets `l{i}`; levels past the limit are unseen.
        let deep: Vec<Profile> = (1..=MAX_PROFILE_DEPTH + 2)
            .map(|i| {
                let next = format!("p{}", i + 1);
                profile(&format!("p{i}"), json!({ format!("l{i}"): i }), &[&next])
            })
            .collect();
        let expected: Vec<(String, Value, ParamSource)> = (1..=MAX_PROFILE_DEPTH)
            .map(|i| (format!("l{i}"), json!(i), src(&format!("p{i}"))))
            .collect();
        let expected: Vec<(&str, Value, ParamSource)> = expected
            .iter()
            .map(|(n, v, s)| (n.as_str(), v.clone(), s.clone()))
            .collect();
        check(&machine(json!({}), &["p1"]), &deep, &[], &expected);
    }

    #[test]
    fn sources_serialize_with_a_kind_tag() {
        assert_eq!(
            serde_json::to_value(src("rack1")).unwrap(),
            json!({"kind": "profile", "name": "rack1"})
        );
        assert_eq!(
            serde_json::to_value(ParamSource::Default).unwrap(),
            json!({"kind": "default"})
        );
    }

    #[test]
    fn missing_profiles_are_reported_and_storage_errors_end_resolution() {
        let world = [profile("a", json!({"x": "a"}), &["gone"])];
        let profiles = |n: &str| Ok::<_, String>(world.iter().find(|p| p.name == n).cloned());
        let no_defs = |_: &str| Ok::<Option<Param>, String>(None);
        let got = effective_params(
            &machine(json!({}), &["a", "also-gone"]),
            &profiles,
            &no_defs,
            Vec::<String>::new(),
        )
        .unwrap();
        assert_eq!(got.params["x"].source, src("a"));
        assert_eq!(
            got.missing_profiles,
            ["gone", "also-gone", GLOBAL_PROFILE].map(String::from)
        );

        // A failing read is an error, not an absent profile or definition.
        let failing = |n: &str| {
            if n == "a" {
                Err("disk on fire".to_string())
            } else {
                Ok(None)
            }
        };
        let m = machine(json!({}), &["a"]);
        assert_eq!(
            effective_params(&m, &failing, &no_defs, Vec::<String>::new()),
            Err("disk on fire".to_string())
        );
        assert_eq!(
            lookup_param(&m, &failing, &no_defs, "x"),
            Err("disk on fire".to_string())
        );
        let failing_defs = |_: &str| Err::<Option<Param>, _>("bad definition read".to_string());
        assert_eq!(
            effective_params(&machine(json!({}), &[]), &profiles, &failing_defs, ["p"]),
            Err("bad definition read".to_string())
        );
    }
}
