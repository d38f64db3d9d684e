//! The `#[job]` attribute of procpool: turns a plain function into a job that a pool
//! can run in a worker process. Its documentation is on [`macro@job`]; users reach it
//! as `procpool::job`.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote, quote_spanned};
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, LitStr, Meta, Pat, Path, PathArguments,
    ReturnType, Type, parse_macro_input, parse_quote, spanned::Spanned,
};

/// Makes a function a procpool job: a pool can run it in a worker process.
///
/// ```ignore
/// /// Squares a number.
/// #[procpool::job]
/// fn square(x: u64) -> u64 { x * x }
///
/// assert_eq!(square(3), 9);              // still callable here, in this process
/// let v = pool.map(square, 0..10)?;      // and a typed handle for the pool
/// ```
///
/// In place of the function the attribute puts a unit struct of the same name that
/// implements `procpool::Job` and dereferences to the function, and registers the job
/// in the table a worker announces when a pool starts it.
///
/// # Arguments and result
///
/// A job takes its arguments by value: they are decoded in the worker process, so they
/// cannot borrow from the caller (`String`, not `&str`; `Vec<T>`, not `&[T]`). Several
/// arguments travel as one tuple (`pool.apply(add, (1, 2))`). Arguments and result
/// are serde types (`#[derive(Serialize, Deserialize)]`). A return type spelled
/// `Result<T, E>` (with `E: Display`) makes a fallible job: its `Err` reaches the
/// caller as `JobError::Failed` with `E`'s text. A job cannot be `async`, generic,
/// or take `self`.
///
/// # Names
///
/// A job is found in the worker by its name: the function's name, or the one given
/// with `#[job(name = "...")]`. Names are one namespace per program, whatever module a
/// job is in, so two jobs named `process` in two modules of one crate do not compile
/// (the error names `__procpool_job_named_process`); rename one:
///
/// ```ignore
/// mod images {
///     #[procpool::job(name = "images::process")]
///     pub fn process(path: String) -> u64 { 0 }
/// }
/// ```
///
/// Jobs of two crates linked into one program can only meet at run time: a pool
/// refuses such workers at `build()` (in a test binary, the first test that builds a
/// pool), and so does `procpool jobs`, naming the functions that share a name.
///
/// # What `procpool jobs` shows
///
/// The first paragraph of the function's doc comment is the job's description, and
/// the argument names are shown beside the JSON of the values they name (`int (ms)`),
/// so a doc comment and a name that says its unit (`ms`, `bytes`) are the job's
/// documentation for people running it from the command line.
///
/// # Inside procpool
///
/// Code inside the `procpool` crates names the path to its own runtime with
/// `#[job(crate = path)]`.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut name: Option<LitStr> = None;
    let mut krate: Path = parse_quote!(::procpool);
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            name = Some(meta.value()?.parse()?);
            Ok(())
        } else if meta.path.is_ident("crate") {
            krate = meta.value()?.parse()?;
            Ok(())
        } else {
            Err(meta.error("expected `name = \"...\"` or `crate = path`"))
        }
    });
    parse_macro_input!(attr with parser);
    let func = parse_macro_input!(item as ItemFn);
    match expand(func, name, krate) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(
    func: ItemFn,
    name: Option<LitStr>,
    krate: Path,
) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        return Err(syn::Error::new(
            a.span(),
            "a job cannot be async: a worker runs it to completion on its own thread; \
             make it a plain `fn` (it may build a runtime inside and block on it)",
        ));
    }
    if !sig.generics.params.is_empty()
        && sig
            .generics
            .params
            .iter()
            .all(|p| matches!(p, syn::GenericParam::Lifetime(_)))
    {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a job cannot have lifetime parameters: its arguments and result cannot borrow, \
             since they cross between processes",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a job cannot be generic: the worker must know the concrete types",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(v.span(), "a job cannot be variadic"));
    }
    let mut arg_types = Vec::new();
    let mut arg_labels = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        match input {
            FnArg::Typed(t) => {
                if let Type::ImplTrait(_) = *t.ty {
                    return Err(syn::Error::new(
                        t.ty.span(),
                        "a job argument needs a concrete type",
                    ));
                }
                check_owned(&t.ty, Position::Argument)?;
                arg_types.push((*t.ty).clone());
                arg_labels.push(match &*t.pat {
                    Pat::Ident(p) => p.ident.to_string(),
                    _ => format!("arg{i}"),
                });
            }
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(r.span(), "a job cannot take self"));
            }
        }
    }

    let ident = &sig.ident;
    let vis = &func.vis;
    let job_name = name.unwrap_or_else(|| LitStr::new(&ident.to_string(), ident.span()));
    let docs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let description = first_paragraph(&func.attrs);
    let attrs = &func.attrs;
    let block = &func.block;
    let inputs = &sig.inputs;
    let output = &sig.output;
    let call_fn = format_ident!("__procpool_call");

    let ret_type: Type = match output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, t) => {
            if let Type::ImplTrait(_) = **t {
                return Err(syn::Error::new(
                    t.span(),
                    "a job's result needs a concrete type: it is decoded in the caller's \
                     process",
                ));
            }
            check_owned(t, Position::Result)?;
            (**t).clone()
        }
    };
    let (out_type, fallible) = match result_ok_type(&ret_type) {
        Some(ok) => (ok, true),
        None => (ret_type.clone(), false),
    };

    let arg_names: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("__arg{}", i, span = Span::call_site()))
        .collect();
    let (in_type, unpack): (Type, proc_macro2::TokenStream) = match arg_types.len() {
        0 => (parse_quote!(()), quote!(let () = input;)),
        1 => {
            let t = &arg_types[0];
            let a = &arg_names[0];
            (parse_quote!(#t), quote!(let #a = input;))
        }
        _ => (
            parse_quote!((#(#arg_types),*)),
            quote!(let (#(#arg_names),*) = input;),
        ),
    };
    let call = quote!(Self::#call_fn(#(#arg_names),*));
    let run_body = if fallible {
        quote!(#call.map_err(|e| ::std::string::ToString::to_string(&e)))
    } else {
        quote!(::std::result::Result::Ok(#call))
    };

    // One macro per job name at the crate root: a second job of the same name in this
    // crate is a compile error ("defined multiple times"), at both functions.
    let unique = format_ident!(
        "__procpool_job_named_{}",
        identifier_safe(&job_name.value()),
        span = job_name.span()
    );
    let unique_macro = quote_spanned! {job_name.span()=>
        #[doc(hidden)]
        #[macro_export]
        macro_rules! #unique {
            () => {};
        }
    };

    Ok(quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident;

        impl #ident {
            #(#attrs)*
            #[doc(hidden)]
            fn #call_fn(#inputs) #output #block
        }

        impl #krate::Job for #ident {
            type Input = #in_type;
            type Output = #out_type;
            const NAME: &'static str = #job_name;
            const DESCRIPTION: &'static str = #description;
            const ARGUMENTS: &'static [&'static str] = &[#(#arg_labels),*];
            const PATH: &'static str =
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident));
            fn run(input: Self::Input) -> ::std::result::Result<Self::Output, ::std::string::String> {
                #unpack
                #run_body
            }
        }

        #unique_macro

        impl ::std::ops::Deref for #ident {
            type Target = fn(#(#arg_types),*) -> #ret_type;
            fn deref(&self) -> &Self::Target {
                const F: fn(#(#arg_types),*) -> #ret_type = #ident::#call_fn;
                &F
            }
        }

        #krate::__private::inventory::submit! {
            #krate::JobEntry::of::<#ident>()
        }
    })
}

#[derive(Clone, Copy)]
enum Position {
    Argument,
    Result,
}

/// Refuses a type that borrows (a reference or a lifetime anywhere in it), with the
/// owned type to use instead where there is an obvious one.
fn check_owned(ty: &Type, position: Position) -> syn::Result<()> {
    let Some((at, instead)) = borrowed(ty) else {
        return Ok(());
    };
    let (verb, whose, process) = match position {
        Position::Argument => ("take", "argument", "the worker process"),
        Position::Result => ("return", "result", "the caller's process"),
    };
    let instead = match instead {
        Some(owned) => format!("{verb} `{owned}` instead"),
        None => format!("{verb} an owned type (`String`, `Vec<T>`, `PathBuf`, ...)"),
    };
    let message =
        format!("a job's {whose} cannot borrow, since it is decoded in {process}: {instead}");
    Err(syn::Error::new_spanned(at, message))
}

/// Where `ty` borrows (a reference, or a lifetime other than `'static`), and the owned
/// type to suggest for it if there is one.
fn borrowed(ty: &Type) -> Option<(proc_macro2::TokenStream, Option<String>)> {
    match ty {
        Type::Reference(r) => Some((quote!(#r), owned_for(&r.elem))),
        Type::Paren(p) => borrowed(&p.elem),
        Type::Group(g) => borrowed(&g.elem),
        Type::Array(a) => borrowed(&a.elem),
        Type::Slice(s) => borrowed(&s.elem),
        Type::Tuple(t) => t.elems.iter().find_map(borrowed),
        Type::Path(p) => {
            if let Some(found) = p.qself.as_ref().and_then(|q| borrowed(&q.ty)) {
                return Some(found);
            }
            p.path.segments.iter().find_map(|segment| {
                let PathArguments::AngleBracketed(args) = &segment.arguments else {
                    return None;
                };
                args.args.iter().find_map(|arg| match arg {
                    GenericArgument::Lifetime(l) if l.ident != "static" => {
                        Some((quote!(#ty), None))
                    }
                    GenericArgument::Type(t) => borrowed(t),
                    _ => None,
                })
            })
        }
        _ => None,
    }
}

/// The owned counterpart of a borrowed `elem` (`str` for `&str`, ...).
fn owned_for(elem: &Type) -> Option<String> {
    let text = quote!(#elem).to_string().replace(' ', "");
    let owned = match text.as_str() {
        "str" => "String".to_owned(),
        "Path" | "std::path::Path" => "PathBuf".to_owned(),
        "OsStr" | "std::ffi::OsStr" => "OsString".to_owned(),
        "CStr" | "std::ffi::CStr" => "CString".to_owned(),
        _ => match elem {
            Type::Slice(s) => {
                let inner = &s.elem;
                format!("Vec<{}>", quote!(#inner).to_string().replace(' ', ""))
            }
            Type::Reference(_) => return None,
            _ if borrowed(elem).is_none() => text,
            _ => return None,
        },
    };
    Some(owned)
}

/// The first paragraph of a doc comment, on one line.
fn first_paragraph(attrs: &[syn::Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        let Meta::NameValue(nv) = &attr.meta else {
            continue;
        };
        if !nv.path.is_ident("doc") {
            continue;
        }
        let Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) = &nv.value
        else {
            continue;
        };
        let text = s.value();
        // `///` alone is an empty string, which has no lines but ends a paragraph.
        for line in text.lines().chain(text.is_empty().then_some("")) {
            let line = line.trim();
            if line.is_empty() {
                if lines.is_empty() {
                    continue;
                }
                return lines.join(" ");
            }
            lines.push(line.to_owned());
        }
    }
    lines.join(" ")
}

/// `name` as an identifier's tail, one to one: letters and digits stay, `_` doubles,
/// anything else is `_u{hex}_`.
fn identifier_safe(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        match c {
            c if c.is_ascii_alphanumeric() => out.push(c),
            '_' => out.push_str("__"),
            c => out.push_str(&format!("_u{:x}_", c as u32)),
        }
    }
    out
}

/// `T` when `ty` is spelled `Result<T, ..>` (any path ending in `Result`).
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args.iter().find_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    })
}
