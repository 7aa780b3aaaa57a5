//! Who gets in: the [`Authorize`] strategy and its bearer-token preset, [`Tokens`].

use std::fmt;
use std::sync::{Arc, RwLock};

use http::{HeaderMap, header::AUTHORIZATION};
use subtle::ConstantTimeEq;
use tonic::Status;

/// Decides whether a call may proceed, from its request headers.
pub trait Authorize: Clone + Send + Sync + 'static {
    /// `Ok` lets the call through; `Err` is the answer (UNAUTHENTICATED, usually).
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Status>;
}

impl<F> Authorize for F
where
    F: Fn(&HeaderMap) -> Result<(), Status> + Clone + Send + Sync + 'static,
{
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Status> {
        self(headers)
    }
}

/// A set of accepted bearer tokens, shared by every clone and replaceable at any time.
#[derive(Clone, Default)]
pub struct Tokens {
    current: Arc<RwLock<Arc<[Vec<u8>]>>>,
}

/// Why a token set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// No token at all: every call would be refused.
    #[error("no token given (one per line; blank lines and lines starting with # are skipped)")]
    Empty,
    /// A token that cannot travel in an HTTP header.
    #[error("token {line} holds a character that cannot be sent in a header")]
    Unprintable {
        /// Its 1-based position.
        line: usize,
    },
}

impl Tokens {
    /// A set of `tokens`; refused if empty or if one could never be sent in a header.
    pub fn new<I, T>(tokens: I) -> Result<Self, TokensError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let set = Self::default();
        set.replace(tokens)?;
        Ok(set)
    }

    /// Parses a token file: one token a line, surrounding blanks trimmed, blank lines and
    /// `#` comments skipped.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        Self::new(token_lines(text))
    }

    /// Replaces the accepted tokens, for every clone at once. On error nothing changes.
    pub fn replace<I, T>(&self, tokens: I) -> Result<(), TokensError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut parsed = Vec::new();
        for (i, token) in tokens.into_iter().enumerate() {
            let token = token.as_ref();
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TokensError::Unprintable { line: i + 1 });
            }
            parsed.push(token.as_bytes().to_vec());
        }
        if parsed.is_empty() {
            return Err(TokensError::Empty);
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = parsed.into();
        Ok(())
    }

    /// [`Tokens::replace`] from a token file's text.
    pub fn replace_from(&self, text: &str) -> Result<(), TokensError> {
        self.replace(token_lines(text))
    }

    /// How many tokens are accepted now.
    pub fn len(&self) -> usize {
        self.current.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no token is accepted (never true for a set built by `new` or `parse`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `presented` is one of the tokens: compared with every token, each in constant
    /// time, so neither which token matched nor how much of a guess was right shows in timing.
    fn accepts(&self, presented: &[u8]) -> bool {
        let tokens = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        tokens
            .iter()
            .fold(subtle::Choice::from(0), |found, token| {
                found | token.as_slice().ct_eq(presented)
            })
            .into()
    }
}

/// The tokens of a token file's text: one a line, surrounding blanks trimmed, blank lines and
/// `#` comments skipped (what [`Tokens::parse`] accepts; clients read their token the same way).
pub fn token_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

impl fmt::Debug for Tokens {
    /// Never prints a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} accepted)", self.len())
    }
}

impl Authorize for Tokens {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Status> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(token) if self.accepts(token) => Ok(()),
            Some(_) => Err(Status::unauthenticated("invalid bearer token")),
            None => Err(Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <token>`",
            )),
        }
    }
}
