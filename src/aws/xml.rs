//! A small XML tree for the answers of the Query services (STS, IAM) and S3's errors.
//!
//! Answers are bounded by the response limit, so the whole document is read into a tree
//! of elements named by their local names (namespaces do not matter to these answers).

use xmlparser::{ElementEnd, Token, Tokenizer};

/// An element: its local name, its text (the text and CDATA directly inside it,
/// unescaped) and its child elements in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    name: String,
    text: String,
    children: Vec<Element>,
}

/// The document is not well-formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotXml;

impl Element {
    /// Parses a whole document into its root element.
    pub fn parse(text: &str) -> Result<Element, NotXml> {
        let mut stack: Vec<Element> = Vec::new();
        let mut root = None;
        for token in Tokenizer::from(text) {
            match token.map_err(|_| NotXml)? {
                Token::ElementStart { local, .. } => {
                    if root.is_some() {
                        return Err(NotXml);
                    }
                    stack.push(Element { name: local.as_str().to_owned(), ..Element::default() });
                }
                Token::ElementEnd { end: ElementEnd::Open, .. } => {}
                Token::ElementEnd { end: ElementEnd::Close(_, local), .. } => {
                    let done = stack.pop().ok_or(NotXml)?;
                    if done.name != local.as_str() {
                        return Err(NotXml);
                    }
                    close(&mut stack, &mut root, done);
                }
                Token::ElementEnd { end: ElementEnd::Empty, .. } => {
                    let done = stack.pop().ok_or(NotXml)?;
                    close(&mut stack, &mut root, done);
                }
                Token::Text { text } => {
                    if let Some(open) = stack.last_mut() {
                        open.text.push_str(&unescape(text.as_str())?);
                    } else if !text.as_str().trim().is_empty() {
                        return Err(NotXml);
                    }
                }
                Token::Cdata { text, .. } => {
                    stack.last_mut().ok_or(NotXml)?.text.push_str(text.as_str());
                }
                _ => {}
            }
        }
        match (root, stack.is_empty()) {
            (Some(root), true) => Ok(root),
            _ => Err(NotXml),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The element's own text, trimmed.
    pub fn text(&self) -> &str {
        self.text.trim()
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The children named `name` (the `member` elements of a list, say).
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at `path` below this one: `["AssumeRoleResult", "Credentials"]`.
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |e, name| e.child(name))
    }

    /// The first element named `name` at any depth below this one, depth first.
    pub fn find(&self, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|c| if c.name == name { Some(c) } else { c.find(name) })
    }
}

fn close(stack: &mut [Element], root: &mut Option<Element>, done: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(done),
        None => *root = Some(done),
    }
}

/// XML's five named entities and numeric character references.
fn unescape(text: &str) -> Result<String, NotXml> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';').ok_or(NotXml)?;
        let entity = &after[..semi];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = match entity.strip_prefix("#x").or_else(|| entity.strip_prefix("#X")) {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => entity.strip_prefix('#').ok_or(NotXml)?.parse::<u32>(),
                };
                code.ok().and_then(char::from_u32).ok_or(NotXml)?
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_answer_reads_as_a_tree() {
        let doc = r#"<?xml version="1.0"?>
<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
      <SessionToken>a&amp;b&#x2F;c&#61;</SessionToken>
      <Empty/>
    </Credentials>
    <Names><member>one</member><member><![CDATA[<two>]]></member></Names>
  </AssumeRoleResult>
</AssumeRoleResponse>"#;
        let root = Element::parse(doc).unwrap();
        assert_eq!(root.name(), "AssumeRoleResponse");
        let creds = root.at(&["AssumeRoleResult", "Credentials"]).unwrap();
        assert_eq!(creds.child("AccessKeyId").unwrap().text(), "ASIAEXAMPLE");
        assert_eq!(creds.child("SessionToken").unwrap().text(), "a&b/c=");
        assert_eq!(creds.child("Empty").unwrap().text(), "");
        let names: Vec<&str> = root.find("Names").unwrap().children("member").map(Element::text).collect();
        assert_eq!(names, ["one", "<two>"]);
        assert_eq!(root.find("AccessKeyId").unwrap().text(), "ASIAEXAMPLE");
        assert!(root.at(&["AssumeRoleResult", "Missing"]).is_none());
    }

    #[test]
    fn ill_formed_documents_are_refused() {
        for bad in [
            "",
            "text only",
            "<a><b></a>",
            "<a>",
            "<a></a><b></b>",
            "<a>&bogus;</a>",
            "<a>&#xZZ;</a>",
            "<a>unterminated &amp</a>",
        ] {
            assert_eq!(Element::parse(bad), Err(NotXml), "{bad:?}");
        }
    }
}
