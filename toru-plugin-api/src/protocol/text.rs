use std::borrow::{Borrow, Cow};
use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::Header;

/// A string that borrows from the frame it was decoded from when the JSON held no escapes, and
/// owns its text otherwise.
///
/// serde's own `Cow<str>` always allocates when nested in an `Option` or a `Vec`; this type
/// borrows wherever it appears.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CowStr<'a>(pub Cow<'a, str>);

impl<'a> CowStr<'a> {
    /// A borrowed string.
    pub const fn borrowed(s: &'a str) -> Self {
        CowStr(Cow::Borrowed(s))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Detaches the string from the buffer it borrows from.
    pub fn into_owned(self) -> CowStr<'static> {
        CowStr(Cow::Owned(self.0.into_owned()))
    }

    /// The text as an owned `String`, without copying when it is owned already.
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl Deref for CowStr<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CowStr<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for CowStr<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CowStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for CowStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'a> From<&'a str> for CowStr<'a> {
    fn from(s: &'a str) -> Self {
        CowStr(Cow::Borrowed(s))
    }
}

impl From<String> for CowStr<'_> {
    fn from(s: String) -> Self {
        CowStr(Cow::Owned(s))
    }
}

impl<'a> From<Cow<'a, str>> for CowStr<'a> {
    fn from(s: Cow<'a, str>) -> Self {
        CowStr(s)
    }
}

impl PartialEq<str> for CowStr<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for CowStr<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl Serialize for CowStr<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CowStrVisitor;

        impl<'de> Visitor<'de> for CowStrVisitor {
            type Value = CowStr<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(CowStrVisitor)
    }
}

/// Room for a typical request's headers: serde_json gives no length hint, so a plain `Vec` would
/// grow (and copy) twice on its way to 8 headers.
const HEADERS_CAPACITY: usize = 16;

/// Deserializes a header list into a `Vec` allocated once for typical requests.
pub(crate) fn headers<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Header<'a>>, D::Error> {
    struct HeadersVisitor;

    impl<'de> Visitor<'de> for HeadersVisitor {
        type Value = Vec<Header<'de>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of [name, value] pairs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            // A hint comes from the input, so it is capped like serde's own `Vec` does.
            let capacity = seq.size_hint().unwrap_or(HEADERS_CAPACITY).min(1024);
            let mut headers = Vec::with_capacity(capacity);
            while let Some(header) = seq.next_element()? {
                headers.push(header);
            }
            Ok(headers)
        }
    }

    deserializer.deserialize_seq(HeadersVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_owns_escaped_ones() {
        let json = r#"[["a","b"],["c\n","d"]]"#;
        let v: Vec<(CowStr<'_>, CowStr<'_>)> = serde_json::from_str(json).unwrap();
        assert!(matches!(v[0].0.0, Cow::Borrowed("a")));
        assert!(matches!(v[1].0.0, Cow::Owned(_)));
        assert_eq!(v[1].0, "c\n");
    }

    #[test]
    fn headers_keep_their_order_past_the_initial_capacity() {
        #[derive(Deserialize)]
        struct H<'a> {
            #[serde(borrow, deserialize_with = "headers")]
            h: Vec<Header<'a>>,
        }
        let pairs: Vec<String> = (0..40).map(|i| format!(r#"["n{i}","v{i}"]"#)).collect();
        let json = format!(r#"{{"h":[{}]}}"#, pairs.join(","));
        let got: H<'_> = serde_json::from_str(&json).unwrap();
        assert_eq!(got.h.len(), 40);
        for (i, (n, v)) in got.h.iter().enumerate() {
            assert_eq!(
                (n.as_str(), v.as_str()),
                (&*format!("n{i}"), &*format!("v{i}"))
            );
            assert!(matches!(v.0, Cow::Borrowed(_)));
        }
        let empty: H<'_> = serde_json::from_str(r#"{"h":[]}"#).unwrap();
        assert!(empty.h.is_empty());
        assert!(serde_json::from_str::<H<'_>>(r#"{"h":[["a"]]}"#).is_err());
        assert!(serde_json::from_str::<H<'_>>(r#"{"h":{"a":"b"}}"#).is_err());
    }

    #[test]
    fn borrows_inside_option() {
        let v: Option<CowStr<'_>> = serde_json::from_str(r#""x""#).unwrap();
        assert!(matches!(v.unwrap().0, Cow::Borrowed("x")));
    }
}
