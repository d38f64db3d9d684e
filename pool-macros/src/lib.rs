//! The `#[job]` attribute of procpool: turns a plain function into a job that a pool
//! can run in a worker process.
//!
//! ```ignore
//! #[procpool::job]
//! fn square(x: u64) -> u64 { x * x }
//!
//! assert_eq!(square(3), 9);              // still callable here, in this process
//! let v = pool.map(square, 0..10)?;      // and a typed handle for the pool
//! ```
//!
//! In place of the function the attribute puts a unit struct of the same name that
//! implements `Job` and dereferences to the function, and registers the job under the
//! function's name (or `#[job(name = "...")]`) in the registry a worker announces.
//! Several arguments become one tuple argument; a return type spelled `Result<T, E>`
//! (`E: Display`) makes a fallible job whose `Err` reaches the caller as
//! `JobError::Failed`. Code inside the `procpool` crates names the path to its own
//! runtime with `#[job(crate = path)]`.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::{
    FnArg, GenericArgument, ItemFn, LitStr, Path, PathArguments, ReturnType, Type,
    parse_macro_input, parse_quote, spanned::Spanned,
};

/// Registers a function as a procpool job. See the crate documentation.
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
        return Err(syn::Error::new(a.span(), "a job cannot be async"));
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
    for input in &sig.inputs {
        match input {
            FnArg::Typed(t) => {
                if let Type::ImplTrait(_) = *t.ty {
                    return Err(syn::Error::new(
                        t.ty.span(),
                        "a job argument needs a concrete type",
                    ));
                }
                arg_types.push((*t.ty).clone());
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
    let attrs = &func.attrs;
    let block = &func.block;
    let inputs = &sig.inputs;
    let output = &sig.output;
    let call_fn = format_ident!("__procpool_call");

    let ret_type: Type = match output {
        ReturnType::Default => parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
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
            fn run(input: Self::Input) -> ::std::result::Result<Self::Output, ::std::string::String> {
                #unpack
                #run_body
            }
        }

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
