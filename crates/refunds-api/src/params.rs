//! Strict query strings: every parameter known, none repeated, none empty.

use std::collections::BTreeMap;

use crate::error::ApiError;

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
