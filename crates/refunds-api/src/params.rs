//! Strict query strings: every parameter known, none repeated, none empty.

use std::collections::BTreeMap;

use crate::error::ApiError;

/// Every parameter with other spellings: its canonical name, then its
/// aliases. A request may use any one spelling of a parameter; two spellings
/// of one parameter are refused like a repeat. `schemas/openapi.json` names
/// each alias's canonical parameter (`x-alias-of`) and each canonical
/// parameter's aliases (`x-aliases`); a test below keeps it so.
pub const SPELLINGS: &[&[&str]] = &[
    &["status", "state"],
    &["currency", "currency_code"],
    &["transaction_id", "payment_id"],
    &["tenant_id", "owner_id"],
    &["created_after", "created_at_min", "from", "create_time_start", "created[gte]"],
    &["created_before", "created_at_max", "to", "create_time_end", "created[lte]"],
    &["amount_min", "minimum_amount"],
    &["amount_max", "maximum_amount"],
    &["ordering", "order"],
    &["limit", "page_size"],
];

/// The parameters of one request, checked against the names an endpoint knows.
#[derive(Debug, Default)]
pub struct Params(BTreeMap<String, String>, Vec<(String, String)>);

impl Params {
    /// Parses `query`, refusing names not in `known` (case-sensitive, so
    /// `Limit` is unknown) and any name given twice.
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|_| ApiError::invalid("query", "the query string is not valid URL encoding"))?;
        let mut params = BTreeMap::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::UnknownParameter { param: name });
            }
            if value.is_empty() {
                return Err(ApiError::invalid(&name, format!("{name} must not be empty")));
            }
            if params.contains_key(&name) {
                return Err(ApiError::invalid(&name, format!("{name} is given more than once")));
            }
            params.insert(name, value);
        }
        let raw = params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(Params(params, raw))
    }

    /// Every (name, value) pair, for rebuilding links.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.1
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The value of the parameter `canonical` under whichever of its
    /// [`SPELLINGS`] the request used, with the name as sent.
    pub fn aliased<'a>(&'a self, canonical: &str) -> Result<Option<(&'a str, &'a str)>, ApiError> {
        match SPELLINGS.iter().find(|names| names[0] == canonical) {
            Some(names) => self.one_of(names),
            None => Ok(self.0.get_key_value(canonical).map(|(name, value)| (name.as_str(), value.as_str()))),
        }
    }

    /// The value of a parameter that may be spelled several ways; giving two
    /// of the spellings is refused like a repeat.
    pub fn one_of<'a>(&'a self, names: &[&'a str]) -> Result<Option<(&'a str, &'a str)>, ApiError> {
        let mut found = None;
        for &name in names {
            if let Some(value) = self.get(name) {
                if let Some((first, _)) = found {
                    return Err(ApiError::invalid(name, format!("{name} and {first} mean the same; give one")));
                }
                found = Some((name, value));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_repeated_and_empty_parameters_are_refused_by_name() {
        let known = ["limit", "tenant_id", "owner_id"];
        assert_eq!(
            Params::parse(Some("Limit=1"), &known).unwrap_err(),
            ApiError::UnknownParameter { param: "Limit".into() }
        );
        assert!(
            matches!(Params::parse(Some("limit=1&limit=2"), &known), Err(ApiError::InvalidParameter { param, .. }) if param == "limit")
        );
        assert!(
            matches!(Params::parse(Some("limit="), &known), Err(ApiError::InvalidParameter { param, .. }) if param == "limit")
        );
        let params = Params::parse(Some("tenant_id=a&owner_id=b"), &known).unwrap();
        assert!(
            matches!(params.one_of(&["tenant_id", "owner_id"]), Err(ApiError::InvalidParameter { param, .. }) if param == "owner_id")
        );
        let params = Params::parse(Some("owner_id=org%20x"), &known).unwrap();
        assert_eq!(params.one_of(&["tenant_id", "owner_id"]).unwrap(), Some(("owner_id", "org x")));
    }
}

/// `schemas/openapi.json` (served at `/openapi.json`) must tell a tool, not
/// only a reader, which parameters are spellings of which.
#[cfg(test)]
mod openapi_tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::SPELLINGS;

    fn document() -> Value {
        serde_json::from_str(crate::routes::OPENAPI).expect("the OpenAPI document is JSON")
    }

    /// Every operation's parameters, as (path, parameters).
    fn operations(doc: &Value) -> Vec<(String, Vec<Value>)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for operation in item.as_object().unwrap().values() {
                let parameters = operation["parameters"].as_array().cloned().unwrap_or_default();
                out.push((path.clone(), parameters));
            }
        }
        out
    }

    #[test]
    fn every_alias_the_server_accepts_is_documented_with_its_canonical_name() {
        let doc = document();
        // The list route knows every spelling, so every one is documented there.
        let list: BTreeSet<&str> = crate::list::KNOWN.iter().copied().collect();
        let list_doc: BTreeSet<String> = doc["paths"]["/v1/refunds"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        for names in SPELLINGS {
            for name in *names {
                assert!(list.contains(name), "{name} is a spelling the list route does not know");
                assert!(list_doc.contains(*name), "{name} is not documented on /v1/refunds");
            }
        }
        let mut checked: usize = 0;
        for (path, parameters) in operations(&doc) {
            let named = |name: &str| parameters.iter().find(|p| p["name"] == name);
            for names in SPELLINGS {
                let (canonical, aliases) = names.split_first().unwrap();
                let present: Vec<&&str> = names.iter().filter(|n| named(n).is_some()).collect();
                if present.is_empty() {
                    continue;
                }
                assert_eq!(present.len(), names.len(), "{path} documents only {present:?} of {names:?}");
                let canonical_doc = named(canonical).unwrap();
                assert_eq!(canonical_doc["x-aliases"], json!(aliases), "{path} {canonical}: x-aliases");
                assert!(canonical_doc.get("x-alias-of").is_none(), "{path} {canonical} is canonical");
                let description = canonical_doc["description"].as_str().unwrap();
                for alias in aliases {
                    assert!(description.contains(&format!("`{alias}`")), "{path} {canonical}: {description}");
                }
                for alias in aliases {
                    let alias_doc = named(alias).unwrap();
                    assert_eq!(alias_doc["x-alias-of"], json!(canonical), "{path} {alias}: x-alias-of");
                    assert!(alias_doc.get("x-aliases").is_none(), "{path} {alias} is an alias");
                    let description = alias_doc["description"].as_str().unwrap();
                    assert!(
                        description.contains(&format!("Alias of `{canonical}`")) && description.contains("400"),
                        "{path} {alias}: the description names `{canonical}` and the 400 for both: {description}"
                    );
                    checked += 1;
                }
            }
            // No parameter claims an alias relation the server does not have.
            for parameter in &parameters {
                let name = parameter["name"].as_str().unwrap();
                if let Some(of) = parameter.get("x-alias-of") {
                    assert!(
                        SPELLINGS.iter().any(|names| json!(names[0]) == *of && names[1..].contains(&name)),
                        "{path} {name}: x-alias-of {of} is not an alias the server accepts"
                    );
                }
                if parameter.get("x-aliases").is_some() {
                    assert!(SPELLINGS.iter().any(|names| names[0] == name), "{path} {name}: x-aliases");
                }
            }
        }
        assert!(checked >= SPELLINGS.iter().map(|n| n.len() - 1).sum::<usize>(), "every alias was checked");
    }

    #[test]
    fn the_document_describes_405_method_not_allowed() {
        let doc = document();
        let codes = &doc["components"]["schemas"]["ErrorResponse"]["properties"]["error"]["properties"]["code"]["enum"];
        assert!(codes.as_array().unwrap().contains(&json!("method_not_allowed")), "{codes}");
        let response = &doc["components"]["responses"]["MethodNotAllowed"];
        assert!(response["headers"].get("Allow").is_some(), "{response}");
        assert!(doc["info"]["description"].as_str().unwrap().contains("405"));
    }
}
