//! `*.get_all` the way the real server builds its Mongo query (`database/model/base.py`):
//! list filters (OR-ed; `-x` or `__$not, x` excludes; `__$all` ANDs), `name` as a regex, other
//! dotted fields as equality, hidden documents left out unless `search_hidden` or `id` is given,
//! `only_fields` projection (`id` always comes back), `order_by`, and paging with the silent
//! 500 cap, or a scroll (`scroll_id` / `size` / `refresh_scroll`).

use super::error::ApiError;
use super::store::{get_path, new_id, set_path};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::HashMap;

/// The server's `max_page_size` (`services/_mongo.conf`).
pub const MAX_PAGE_SIZE: usize = 500;

/// What a collection allows as list filters (`a.*` = any path under `a`), and the allowed
/// values of enum fields.
pub struct Collection {
    pub list_fields: &'static [&'static str],
    pub enums: &'static [(&'static str, &'static [&'static str])],
}

impl Collection {
    fn is_list_field(&self, key: &str) -> bool {
        self.list_fields.iter().any(|f| match f.strip_suffix(".*") {
            Some(prefix) => key
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.')),
            None => *f == key,
        })
    }
}

/// Request keys that steer the query rather than filter.
const CONTROL_KEYS: &[&str] = &[
    "only_fields",
    "order_by",
    "page",
    "page_size",
    "search_hidden",
    "scroll_id",
    "size",
    "refresh_scroll",
    "search_text",
    "_any_",
    "_all_",
    "include_subprojects",
    "allow_public",
    "batch_size",
];

pub struct Page {
    pub items: Vec<Value>,
    /// Set when the request used a scroll.
    pub scroll_id: Option<String>,
}

/// Whether a caller of `company` reads `doc`: its company's documents and public ones (no
/// company), as `_prepare_perm_query` scopes every query (`database/model/base.py:779-782`).
pub fn visible_to(doc: &Value, company: &str) -> bool {
    match doc.get("company") {
        None | Some(Value::Null) => true,
        Some(Value::String(c)) => c.is_empty() || c == company,
        Some(_) => false,
    }
}

/// The page of `docs` matching `req`; only those visible to `company`, when given.
pub fn get_all(
    docs: &[Value],
    req: &Map<String, Value>,
    coll: &Collection,
    company: Option<&str>,
    scrolls: &mut HashMap<String, usize>,
) -> Result<Page, ApiError> {
    let filter = Filter::parse(req, coll)?;
    let mut matched: Vec<&Value> = docs
        .iter()
        .filter(|d| company.is_none_or(|c| visible_to(d, c)) && filter.matches(d))
        .collect();
    if let Some(order) = req.get("order_by") {
        let keys = order_keys(order)?;
        matched.sort_by(|a, b| {
            keys.iter()
                .map(|(path, desc)| {
                    let o = compare(get_path(a, path), get_path(b, path));
                    if *desc { o.reverse() } else { o }
                })
                .find(|o| *o != Ordering::Equal)
                .unwrap_or(Ordering::Equal)
        });
    }
    let projection = Projection::parse(req.get("only_fields"))?;

    let scrolling = req.contains_key("scroll_id") || req.contains_key("size");
    let (start, len, scroll_id) = if scrolling {
        let size = match req.get("size") {
            None | Some(Value::Null) => MAX_PAGE_SIZE,
            Some(v) => positive_int(v, "size")?.min(MAX_PAGE_SIZE),
        };
        let refresh = req.get("refresh_scroll").and_then(Value::as_bool) == Some(true);
        let offset = match req.get("scroll_id").and_then(Value::as_str) {
            Some(id) if !refresh => scrolls.remove(id).unwrap_or(0),
            _ => 0,
        };
        let taken = size.min(matched.len().saturating_sub(offset));
        let id = new_id();
        scrolls.insert(id.clone(), offset + taken);
        (offset, size, Some(id))
    } else {
        let (page, size) = paging(req)?;
        (page.saturating_mul(size), size, None)
    };
    let items = matched
        .into_iter()
        .skip(start)
        .take(len)
        .map(|d| projection.apply(d))
        .collect();
    Ok(Page { items, scroll_id })
}

/// `page` (≥ 0) and `page_size` (≥ 1, default and cap 500), as `validate_paging` does.
fn paging(req: &Map<String, Value>) -> Result<(usize, usize), ApiError> {
    let page = match req.get("page") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .filter(|p| *p >= 0)
            .ok_or_else(|| ApiError::validation("page must be >=0: field=page"))?
            as usize,
    };
    let size = match req.get("page_size") {
        None | Some(Value::Null) => MAX_PAGE_SIZE,
        Some(v) => positive_int(v, "page_size")?.min(MAX_PAGE_SIZE),
    };
    Ok((page, size))
}

fn positive_int(v: &Value, field: &str) -> Result<usize, ApiError> {
    v.as_i64()
        .filter(|n| *n >= 1)
        .map(|n| n as usize)
        .ok_or_else(|| ApiError::validation(format!("{field} must be >0: field={field}")))
}

fn order_keys(order: &Value) -> Result<Vec<(String, bool)>, ApiError> {
    let list: Vec<&str> = match order {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or_else(|| ApiError::validation("order_by must be a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Value::Null => vec![],
        _ => return Err(ApiError::validation("order_by must be a list of strings")),
    };
    Ok(list
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('-') {
            Some(rest) => (rest.to_string(), true),
            None => (s.trim_start_matches('+').to_string(), false),
        })
        .collect())
}

/// Mongo's cross-type order: missing/null < numbers < strings < objects < arrays < booleans.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Number(_)) => 1,
            Some(Value::String(_)) => 2,
            Some(Value::Object(_)) => 3,
            Some(Value::Array(_)) => 4,
            Some(Value::Bool(_)) => 5,
        }
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

enum Cond {
    /// A list filter on a field: include any (or all) of, exclude all of.
    List {
        path: String,
        include: Vec<Value>,
        exclude: Vec<Value>,
        all: bool,
    },
    Regex {
        path: String,
        re: regex::Regex,
    },
    Equals {
        path: String,
        value: Value,
    },
    SearchText(String),
    Pattern {
        fields: Vec<String>,
        re: regex::Regex,
        all: bool,
    },
}

struct Filter {
    conds: Vec<Cond>,
    hide_hidden: bool,
}

impl Filter {
    fn parse(req: &Map<String, Value>, coll: &Collection) -> Result<Filter, ApiError> {
        let mut conds = Vec::new();
        for (key, value) in req {
            if CONTROL_KEYS.contains(&key.as_str()) {
                continue;
            }
            if coll.is_list_field(key) {
                if value.is_null() {
                    continue;
                }
                let items = value.as_array().ok_or_else(|| {
                    ApiError::validation(format!("{key}: {value} is not of type 'array'"))
                })?;
                conds.push(list_cond(key, items, coll)?);
            } else if key == "name" {
                match value {
                    Value::Null => {}
                    Value::String(pattern) => conds.push(Cond::Regex {
                        path: key.clone(),
                        re: regex::Regex::new(pattern)
                            .map_err(|_| ApiError::invalid_regex(pattern))?,
                    }),
                    _ => {
                        return Err(ApiError::validation(format!(
                            "name: {value} is not of type 'string'"
                        )));
                    }
                }
            } else if key.contains('.') {
                match value {
                    Value::Array(items) => conds.push(list_cond(key, items, coll)?),
                    _ => conds.push(Cond::Equals {
                        path: key.clone(),
                        value: value.clone(),
                    }),
                }
            }
            // Other keys are schema fields this test server does not filter on; the real
            // server accepts them too (`additionalProperties`), so ignoring is the faithful part.
        }
        if let Some(text) = req.get("search_text").and_then(Value::as_str)
            && !text.is_empty()
        {
            conds.push(Cond::SearchText(text.to_lowercase()));
        }
        for (key, all) in [("_any_", false), ("_all_", true)] {
            if let Some(spec) = req.get(key).and_then(Value::as_object)
                && let Some(pattern) = spec.get("pattern").and_then(Value::as_str)
            {
                let fields = spec
                    .get("fields")
                    .and_then(Value::as_array)
                    .map(|f| {
                        f.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                let re =
                    regex::Regex::new(pattern).map_err(|_| ApiError::invalid_regex(pattern))?;
                conds.push(Cond::Pattern { fields, re, all });
            }
        }
        let hide_hidden = req.get("search_hidden").and_then(Value::as_bool) != Some(true)
            && !req.contains_key("id");
        Ok(Filter { conds, hide_hidden })
    }

    fn matches(&self, doc: &Value) -> bool {
        if self.hide_hidden && values_at(doc, "system_tags").contains(&Value::from("hidden")) {
            return false;
        }
        self.conds.iter().all(|c| c.matches(doc))
    }
}

fn list_cond(key: &str, items: &[Value], coll: &Collection) -> Result<Cond, ApiError> {
    let allowed = coll
        .enums
        .iter()
        .find(|(f, _)| *f == key)
        .map(|(_, values)| *values);
    let (mut include, mut exclude, mut all, mut negate_next) = (vec![], vec![], false, false);
    for item in items {
        match item.as_str() {
            Some("__$all") => all = true,
            Some("__$any") => all = false,
            Some("__$not") => negate_next = true,
            Some(s) => {
                let (negated, value) = match s.strip_prefix('-') {
                    Some(rest) if !negate_next => (true, rest),
                    _ => (negate_next, s),
                };
                negate_next = false;
                if let Some(allowed) = allowed
                    && !allowed.contains(&value)
                {
                    return Err(ApiError::validation(format!(
                        "{key}: '{value}' is not one of {allowed:?}"
                    )));
                }
                if negated {
                    exclude.push(Value::from(value));
                } else {
                    include.push(Value::from(value));
                }
            }
            None => include.push(item.clone()),
        }
    }
    Ok(Cond::List {
        path: key.to_string(),
        include,
        exclude,
        all,
    })
}

/// The values at `path`: an array's items, a scalar alone, nothing when missing or null.
fn values_at(doc: &Value, path: &str) -> Vec<Value> {
    match get_path(doc, path) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => items.clone(),
        Some(v) => vec![v.clone()],
    }
}

impl Cond {
    fn matches(&self, doc: &Value) -> bool {
        match self {
            Cond::List {
                path,
                include,
                exclude,
                all,
            } => {
                let have = values_at(doc, path);
                let inc = include.is_empty()
                    || if *all {
                        include.iter().all(|v| have.contains(v))
                    } else {
                        include.iter().any(|v| have.contains(v))
                    };
                inc && !exclude.iter().any(|v| have.contains(v))
            }
            Cond::Regex { path, re } => get_path(doc, path)
                .and_then(Value::as_str)
                .is_some_and(|s| re.is_match(s)),
            Cond::Equals { path, value } => match get_path(doc, path) {
                Some(Value::Array(items)) => items.contains(value),
                Some(v) => loosely_equal(v, value),
                None => value.is_null(),
            },
            Cond::SearchText(text) => ["id", "name", "comment"].iter().any(|f| {
                get_path(doc, f)
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.to_lowercase().contains(text))
            }),
            Cond::Pattern { fields, re, all } => {
                let hit = |f: &String| {
                    get_path(doc, f)
                        .and_then(Value::as_str)
                        .is_some_and(|s| re.is_match(s))
                };
                if *all {
                    fields.iter().all(hit)
                } else {
                    fields.iter().any(hit)
                }
            }
        }
    }
}

/// Runtime values may be ints or strings depending on the writer; Mongo compares exactly, but
/// equal numbers of different JSON spellings (7 vs 7.0) are the same BSON number.
fn loosely_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// `only_fields`: an inclusion list (dotted paths; `id` always included) or, when every entry
/// starts with `-`, an exclusion list.
struct Projection {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Projection {
    fn parse(v: Option<&Value>) -> Result<Projection, ApiError> {
        let fields: Vec<String> = match v {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::validation("only_fields must be a list of strings")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(ApiError::validation(
                    "only_fields must be a list of strings",
                ));
            }
        };
        let (exclude, include): (Vec<String>, Vec<String>) =
            fields.into_iter().partition(|f| f.starts_with('-'));
        if !include.is_empty() && !exclude.is_empty() {
            return Err(ApiError::fields_value_error(
                "cannot mix inclusion and exclusion in only_fields",
                &[],
            ));
        }
        Ok(Projection {
            include,
            exclude: exclude
                .into_iter()
                .map(|f| f.trim_start_matches('-').to_string())
                .collect(),
        })
    }

    fn apply(&self, doc: &Value) -> Value {
        if !self.include.is_empty() {
            let mut out = Map::new();
            if let Some(id) = doc.get("id") {
                out.insert("id".into(), id.clone());
            }
            for path in &self.include {
                if let Some(v) = get_path(doc, path) {
                    set_path(&mut out, path, v.clone());
                }
            }
            return Value::Object(out);
        }
        let mut out = doc.clone();
        for path in &self.exclude {
            remove_path(&mut out, path);
        }
        out
    }
}

fn remove_path(doc: &mut Value, path: &str) {
    match path.rsplit_once('.') {
        None => {
            if let Some(m) = doc.as_object_mut() {
                m.remove(path);
            }
        }
        Some((parent, last)) => {
            let mut cur = Some(doc);
            for part in parent.split('.') {
                cur = cur.and_then(|c| c.get_mut(part));
            }
            if let Some(m) = cur.and_then(Value::as_object_mut) {
                m.remove(last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TASKS: Collection = Collection {
        list_fields: &[
            "id",
            "system_tags",
            "status",
            "execution.queue",
            "hyperparams.*",
        ],
        enums: &[("status", &["created", "in_progress", "stopped"])],
    };

    #[test]
    fn wildcard_list_fields() {
        assert!(TASKS.is_list_field("hyperparams.properties.k8s-queue.value"));
        assert!(!TASKS.is_list_field("hyperparams"));
        assert!(!TASKS.is_list_field("hyperparamsx.a"));
        assert!(TASKS.is_list_field("execution.queue"));
    }

    fn docs() -> Vec<Value> {
        vec![
            json!({"id": "a", "name": "one", "status": "in_progress",
                   "system_tags": ["external_service"], "execution": {"queue": "q1"},
                   "runtime": {"_PORT": 8080}}),
            json!({"id": "b", "name": "two", "status": "stopped",
                   "system_tags": ["external_service", "hidden"], "execution": {"queue": "q2"}}),
            json!({"id": "c", "name": "three", "status": "in_progress", "system_tags": [],
                   "execution": {"queue": "q1"}}),
        ]
    }

    /// `get_all` over `docs` with the test collection, no company scope.
    fn query(
        docs: &[Value],
        req: &Value,
        scrolls: &mut HashMap<String, usize>,
    ) -> Result<Page, ApiError> {
        let empty = Map::new();
        get_all(
            docs,
            req.as_object().unwrap_or(&empty),
            &TASKS,
            None,
            scrolls,
        )
    }

    fn ids(req: Value) -> Vec<String> {
        let mut scrolls = HashMap::new();
        let page = query(&docs(), &req, &mut scrolls).unwrap();
        page.items
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn filters() {
        assert_eq!(ids(json!({"system_tags": ["external_service"]})), ["a"]);
        assert_eq!(
            ids(json!({"system_tags": ["external_service"], "search_hidden": true})),
            ["a", "b"]
        );
        assert_eq!(ids(json!({"id": ["b"]})), ["b"], "id finds hidden tasks");
        assert_eq!(ids(json!({"system_tags": ["-external_service"]})), ["c"]);
        assert_eq!(
            ids(json!({"status": ["__$not", "in_progress"], "search_hidden": true})),
            ["b"]
        );
        assert_eq!(
            ids(json!({"execution.queue": ["q1"], "status": ["in_progress"]})),
            ["a", "c"]
        );
        assert_eq!(ids(json!({"name": "^t"})), ["c"]);
        assert_eq!(ids(json!({"runtime._PORT": 8080})), ["a"]);
        assert_eq!(ids(json!({"order_by": ["-name"]})), ["c", "a"]);
        let mut scrolls = HashMap::new();
        let e = query(&docs(), &json!({"status": ["bogus"]}), &mut scrolls)
            .err()
            .unwrap();
        assert_eq!((e.code, e.subcode), (400, 12));
        let e = query(&docs(), &json!({"status": "in_progress"}), &mut scrolls)
            .err()
            .unwrap();
        assert_eq!((e.code, e.subcode), (400, 12));
    }

    #[test]
    fn projection_and_paging() {
        let mut scrolls = HashMap::new();
        let req = json!({"only_fields": ["execution.queue"], "page": 1, "page_size": 1,
                         "search_hidden": true});
        let page = query(&docs(), &req, &mut scrolls).unwrap();
        assert_eq!(
            page.items,
            vec![json!({"id": "b", "execution": {"queue": "q2"}})]
        );
        let many: Vec<Value> = (0..1200)
            .map(|i| json!({"id": format!("{i:04}")}))
            .collect();
        let page = query(&many, &json!({}), &mut scrolls).unwrap();
        assert_eq!(page.items.len(), MAX_PAGE_SIZE, "unpaged get_all is capped");
        let req = json!({"page_size": 10_000, "page": 2});
        let page = query(&many, &req, &mut scrolls).unwrap();
        assert_eq!(page.items.len(), 200, "page_size is clamped to 500");
        // A scroll walks everything once, then comes back short.
        let mut seen = 0;
        let mut scroll = Value::String(String::new());
        loop {
            let req = json!({"scroll_id": scroll, "size": 500});
            let page = query(&many, &req, &mut scrolls).unwrap();
            seen += page.items.len();
            scroll = Value::from(page.scroll_id.unwrap());
            if page.items.len() < 500 {
                break;
            }
        }
        assert_eq!(seen, 1200);
    }
}
